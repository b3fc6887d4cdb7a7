"""``classify --parquet DIR``: verdicts as a folder of rotated Parquet files.

Why a folder of parts: Parquet files cannot be appended to, and analysts read a
folder of parts directly (``pandas.read_parquet(DIR)``, DuckDB, Spark). A part is
cut every ``rotate_s`` seconds or ``max_rows`` verdicts, whichever comes first,
and at shutdown. Each part is written to ``.<name>.tmp`` and renamed, so a reader
globbing ``*.parquet`` never sees a half-written file, and a crash loses at most
the rows not yet cut (never a file).

The columns are those of ``trafficsnn verdicts`` (``api.verdict_row``: the flow
table vocabulary, one ``p_<class>`` column per class). Writing happens on one
background thread, so a slow disk does not stall classification; when the disk
fails or falls behind, rows are held up to ``max_pending`` and the oldest beyond
it are dropped and counted (``dropped``), never silently lost.
"""
from __future__ import annotations

import logging
import os
import queue
import re
import secrets
import socket
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

from ..errors import ConfigError

log = logging.getLogger(__name__)


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.]+", "_", text)[:40] or "host"


class ParquetDirSink:
    kind = "parquet"

    def __init__(self, folder: str | Path, *, rotate_s: float = 300.0, max_rows: int = 100_000,
                 max_pending: int | None = None, zeek_names: bool = False, clock=time.time):
        from ..flows.store import _need_pyarrow
        from ..errors import TrafficSNNError

        try:
            _need_pyarrow()
        except TrafficSNNError as err:
            raise ConfigError(f"--parquet: {err}") from None
        self.folder = Path(folder).expanduser()
        if not self.folder.is_dir():
            if not self.folder.parent.is_dir():
                raise ConfigError(f"--parquet {folder}: folder {self.folder.parent} does not exist (create it first)")
            try:
                self.folder.mkdir(mode=0o750, exist_ok=True)
            except OSError as err:
                raise ConfigError(f"--parquet {folder}: cannot create it: {err.strerror or err}") from None
        if not os.access(self.folder, os.W_OK | os.X_OK):
            raise ConfigError(f"--parquet {folder}: folder is not writable by this user")
        if rotate_s <= 0 or max_rows < 1:
            raise ConfigError("--parquet-rotate-s must be > 0 and --parquet-max-rows >= 1")
        self.rotate_s, self.max_rows = float(rotate_s), int(max_rows)
        self.max_pending = int(max_pending if max_pending is not None else 10 * max_rows)
        self.zeek_names = zeek_names
        self.clock = clock
        self._rows: list = []               # Verdict objects; made into rows on the writer thread
        self._opened = clock()
        self._seq = 0
        # host, pid and a random token: shards in containers (all pid 1) sharing one folder, or a restart
        # within the same second, never pick an existing name (and a part is never overwritten anyway)
        self._tag = f"{_safe(socket.gethostname())}-{os.getpid()}-{secrets.token_hex(3)}"
        self._lock = threading.Lock()
        self._jobs: queue.Queue = queue.Queue(maxsize=2)
        self._in_writer = 0                 # rows handed to the writer and not yet on disk
        self.written = 0                    # rows on disk
        self.files = 0
        self.dropped = 0                    # rows given up (disk failing or behind beyond max_pending)
        self.errors = 0                     # failed part writes (rows kept and retried)
        self._last_error_log = 0.0
        self._closing = False               # at shutdown a failed part is counted as dropped, not retried
        self._thread = threading.Thread(target=self._writer, name="parquet-sink", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------ Sink protocol
    def write(self, verdicts: list) -> None:
        if not verdicts:
            return
        with self._lock:
            self._rows.extend(verdicts)
            self._bound()
        while len(self._rows) >= self.max_rows and self._cut():
            pass

    def flush(self) -> None:
        """Called after every batch: cut a part when the rotation interval has passed."""
        if self._rows and self.clock() - self._opened >= self.rotate_s:
            self._cut()

    def close(self, timeout: float = 30.0) -> None:
        """Cut what is held and wait (bounded) for the writer to put it on disk; what does not get
        there (a failing disk, a writer stuck past ``timeout``) is counted in ``dropped``."""
        deadline = time.monotonic() + timeout
        self._closing = True
        for _ in range(-(-len(self._rows) // self.max_rows)):
            if not self._cut(block=True, timeout=max(0.0, deadline - time.monotonic())):
                break
        try:
            self._jobs.put(None, timeout=max(0.0, deadline - time.monotonic()))
            self._thread.join(max(0.0, deadline - time.monotonic()))
        except queue.Full:
            pass
        with self._lock:
            lost = len(self._rows) + (self._in_writer if self._thread.is_alive() else 0)
            self.dropped += len(self._rows)
            self._rows.clear()
            if self._thread.is_alive():     # stuck (hung NFS...): what it holds is given up too
                self.dropped += self._in_writer
                self._in_writer = 0
        if lost:
            log.error("--parquet %s: %d verdict row(s) could not be written at exit", self.folder, lost)

    @property
    def pending(self) -> int:
        return len(self._rows) + self._in_writer

    # ---------------------------------------------------------------- internals
    def _bound(self) -> None:
        over = len(self._rows) + self._in_writer - self.max_pending
        if over > 0:
            n = min(over, len(self._rows))
            del self._rows[:n]
            self.dropped += n

    def _cut(self, block: bool = False, timeout: float | None = 30.0) -> bool:
        """Hand the oldest rows (at most ``max_rows``) to the writer; False when the writer is behind."""
        with self._lock:
            if not self._rows:
                self._opened = self.clock()
                return False
            rows, self._rows = self._rows[:self.max_rows], self._rows[self.max_rows:]
            self._in_writer += len(rows)
            opened, self._opened = self._opened, self.clock()
            self._seq += 1
            seq = self._seq
        try:
            self._jobs.put((rows, opened, seq), block=block, timeout=timeout if block else None)
            return True
        except queue.Full:      # the writer is behind: keep the rows here, try again at the next cut
            with self._lock:
                self._in_writer -= len(rows)
                self._rows[:0] = rows
                self._seq -= 1
            return False

    def _name(self, opened: float, seq: int) -> str:
        stamp = datetime.fromtimestamp(opened, timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        return f"verdicts-{stamp}-{self._tag}-{seq:06d}.parquet"

    def _writer(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            rows, opened, seq = job
            name = self._name(opened, seq)
            try:
                self._write_part(rows, self.folder / name)
                with self._lock:
                    self._in_writer -= len(rows)
                    self.written += len(rows)
                    self.files += 1
            except Exception as err:  # noqa: BLE001 - disk full, folder removed...: keep the rows, say so
                with self._lock:
                    self._in_writer -= len(rows)
                    self.errors += 1
                    if self._closing:
                        self.dropped += len(rows)
                    else:
                        self._rows[:0] = rows   # retried with the next part
                        self._bound()
                now = time.monotonic()
                if now - self._last_error_log > 60:
                    self._last_error_log = now
                    log.error("--parquet %s: cannot write %s (%s); %d row(s) held, retried at the next "
                              "rotation", self.folder, name, err, len(rows))

    def _write_part(self, rows: list, path: Path) -> None:
        import pyarrow.parquet as pq

        tmp = path.with_name(f".{path.name}.tmp")
        try:
            table = verdict_arrow_table([v.to_dict() for v in rows], zeek_names=self.zeek_names)
            pq.write_table(table, str(tmp), compression="zstd")
            try:
                os.link(tmp, path)      # like a rename, but fails rather than replace an existing part
            except FileExistsError:
                raise
            except OSError:             # a file system without hard links
                if path.exists():
                    raise FileExistsError(17, "part exists", str(path)) from None
                os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)


# Arrow types of the verdict columns (api.verdict_row), fixed so that every part of a folder has the same
# schema: type inference would make a column that is empty in one part (latency_ms at shutdown) a null
# column there, and the folder would no longer read as one table.
_INT = ("flow_id", "vlan", "proto", "client_port", "server_port", "packets", "steps")
_FLOAT = ("confidence", "first_ts", "verdict_ts", "latency_ms")
_BOOL = ("final", "partial")


def verdict_arrow_table(verdicts: list[dict], *, zeek_names: bool = False, probabilities: bool = True):
    """Verdict dicts -> a pyarrow Table with fixed column types (``p_<class>`` float64, the rest as
    ``_INT``/``_FLOAT``/``_BOOL`` say, strings otherwise)."""
    import pyarrow as pa

    from ..api import verdict_table
    from ..flows.store import ZEEK_NAMES

    cols = verdict_table(verdicts, probabilities=probabilities)
    arrays = {}
    for k, v in cols.items():
        t = (pa.int64() if k in _INT else pa.float64() if k in _FLOAT or k.startswith("p_")
             else pa.bool_() if k in _BOOL else pa.string())
        name = (ZEEK_NAMES.get(k, k) if k != "first_ts" else "ts") if zeek_names else k
        arrays[name] = pa.array(v, type=t)
    return pa.table(arrays)
