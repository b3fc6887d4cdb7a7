"""The extract file: flows as columns in one .npz (no pickle), plus tables (CSV, Parquet, JSON lines).

Layout of the .npz (``FORMAT`` = "trafficsnn-flows", ``VERSION`` = 1):
  meta                 JSON string: format, version, tool version, inputs, options, counts
  flow-level columns   flow_id, vlan, proto, client_hi/lo/port, server_hi/lo/port,
                       first_ts, last_ts, c2s_pkts, s2c_pkts, c2s_bytes, s2c_bytes,
                       end_reason (uint8 index into END_REASONS), offsets (CSR, n_flows + 1)
  packet-level columns ts, size, direction, wire_len, tcp_flags (flow i's packets are
                       [offsets[i], offsets[i+1]))
Written uncompressed by default: reading back is a few memcpy's.

Tables (CSV, Parquet, JSON lines, ``trafficsnn.Flows(...).to_pandas()``) share one vocabulary,
``TABLE_FIELDS`` (addresses as text, ``community_id``, ``proto_name``, IP bytes per direction)
and ``PACKET_FIELDS`` (per-packet lists); ``ZEEK_NAMES`` maps them to Zeek conn.log names. The
.npz keeps only the key columns: ``community_id.community_ids(columns)`` derives the ID from them.
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from ..errors import TrafficSNNError
from .records import END_REASONS, Flow, FlowKey

FORMAT, VERSION = "trafficsnn-flows", 1

FLOW_COLS = {
    "flow_id": np.int64, "vlan": np.uint16, "proto": np.uint8,
    "client_hi": np.uint64, "client_lo": np.uint64, "client_port": np.uint16,
    "server_hi": np.uint64, "server_lo": np.uint64, "server_port": np.uint16,
    "first_ts": np.float64, "last_ts": np.float64,
    "c2s_pkts": np.int64, "s2c_pkts": np.int64, "c2s_bytes": np.int64, "s2c_bytes": np.int64,
    "end_reason": np.uint8,
}
PACKET_COLS = {"ts": np.float64, "size": np.uint32, "direction": np.uint8,
               "wire_len": np.uint32, "tcp_flags": np.uint8}


class FlowBlock:
    """Many ended flows as columns: flow-level ``FLOW_COLS`` + ``offsets`` + packet columns.

    What the ``Columnar`` policy emits; ``len`` is the number of flows.
    """

    def __init__(self, columns: dict[str, np.ndarray]):
        self.columns = columns

    def __len__(self) -> int:
        return len(self.columns["offsets"]) - 1

    def flows(self) -> "FlowSet":
        """The block as a sequence of ``Flow`` objects."""
        return FlowSet(self.columns, {})


class FlowColumns:
    """Accumulates flows (``Flow`` objects or ``FlowBlock``s) into columns, then writes one .npz."""

    def __init__(self) -> None:
        self._rows: list[tuple] = []
        self._pk: dict[str, list[np.ndarray]] = {k: [] for k in PACKET_COLS}
        self._blocks: list[FlowBlock] = []

    def __len__(self) -> int:
        return len(self._rows) + sum(len(b) for b in self._blocks)

    def add(self, flows: Iterable) -> None:
        r = _REASON_IDX
        for f in flows:
            if isinstance(f, FlowBlock):
                self._flush_rows()
                self._blocks.append(f)
                continue
            k = f.key
            self._rows.append((f.flow_id, k.vlan, k.proto, k.client_hi, k.client_lo, k.client_port,
                               k.server_hi, k.server_lo, k.server_port, f.first_ts, f.last_ts,
                               f.c2s_pkts, f.s2c_pkts, f.c2s_bytes, f.s2c_bytes, r[f.end_reason],
                               len(f.ts)))
            for name, lst in self._pk.items():
                lst.append(getattr(f, name))

    def _flush_rows(self) -> None:
        """Turn the ``Flow`` rows gathered so far into one block (keeps the order of flows)."""
        if not self._rows:
            return
        cols = list(zip(*self._rows))
        out = {k: np.asarray(cols[i], dtype=FLOW_COLS[k]) for i, k in enumerate(FLOW_COLS)}
        n = np.asarray(cols[-1], dtype=np.int64)
        out["offsets"] = np.concatenate(([0], np.cumsum(n))).astype(np.int64)
        for k, d in PACKET_COLS.items():
            out[k] = np.concatenate(self._pk[k]).astype(d, copy=False)
        self._blocks.append(FlowBlock(out))
        self._rows = []
        self._pk = {k: [] for k in PACKET_COLS}

    def arrays(self) -> dict[str, np.ndarray]:
        self._flush_rows()
        bl = [b.columns for b in self._blocks if len(b)]
        out = {k: np.concatenate([b[k] for b in bl]).astype(d, copy=False) if bl else np.empty(0, d)
               for k, d in (FLOW_COLS | PACKET_COLS).items()}
        counts = [np.diff(b["offsets"]) for b in bl]
        n = np.concatenate(counts) if counts else np.empty(0, np.int64)
        out["offsets"] = np.concatenate(([0], np.cumsum(n))).astype(np.int64)
        return out


_REASON_IDX = {r: i for i, r in enumerate(END_REASONS)}


class FlowFileWriter:
    """Streams flows into an extract .npz in bounded memory.

    Flows (``Flow`` objects or ``FlowBlock``s) are buffered; past ``spill_bytes`` the
    buffer's columns are appended to raw files in a temporary folder next to the output,
    and ``close()`` assembles the .npz (stored, not compressed) by streaming them into
    its members (in-memory blocks are streamed the same way, never concatenated). Memory
    stays bounded however large the capture; the output is written atomically (a ``.tmp``
    file renamed at the end).
    """

    def __init__(self, path: str | os.PathLike, *, spill_bytes: int = 64 << 20):
        self.path = Path(path)
        self.spill_bytes = int(spill_bytes)
        self._buf = FlowColumns()
        self._buf_bytes = 0
        self._dir: Path | None = None
        self._lens = {k: 0 for k in (*FLOW_COLS, *PACKET_COLS, "_count")}
        self.n_flows = 0
        self.n_packets = 0

    def add(self, items: Iterable) -> None:
        items = list(items)
        self._buf.add(items)
        for x in items:
            if isinstance(x, FlowBlock):
                self.n_flows += len(x)
                m = int(x.columns["offsets"][-1])
            else:
                self.n_flows += 1
                m = len(x.ts)
            self.n_packets += m
            self._buf_bytes += 18 * m + 100
        if self._buf_bytes >= self.spill_bytes:
            self._spill()

    def _spill(self) -> None:
        arrays = self._buf.arrays()
        self._buf = FlowColumns()
        self._buf_bytes = 0
        if self._dir is None:
            import tempfile

            self._dir = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.", dir=self.path.parent or "."))
        arrays["_count"] = np.diff(arrays.pop("offsets"))
        for k, a in arrays.items():
            with open(self._dir / k, "ab") as fh:
                fh.write(np.ascontiguousarray(a).data)
            self._lens[k] += len(a)

    def close(self, meta: dict | None = None) -> int:
        """Write the file; returns the number of flows."""
        m = {"format": FORMAT, "version": VERSION, "n_flows": self.n_flows, "n_packets": self.n_packets}
        m.update(meta or {})
        tmp = self.path.with_name(self.path.name + ".tmp")
        dtypes = {**FLOW_COLS, **PACKET_COLS}
        try:
            if self._dir is None:                    # everything fit in memory: stream the blocks
                self._buf._flush_rows()
                bl = [b.columns for b in self._buf._blocks if len(b)]
                lens = {k: sum(len(b[k]) for b in bl) for k in dtypes}
                lens["_count"] = sum(len(b["offsets"]) - 1 for b in bl)

                def chunks(k: str) -> Iterator[np.ndarray]:
                    if k == "_count":
                        return (np.diff(b["offsets"]) for b in bl)
                    return (b[k] for b in bl)
            else:
                self._spill()
                lens = self._lens

                def chunks(k: str) -> Iterator[np.ndarray]:
                    d = np.int64 if k == "_count" else dtypes[k]
                    with open(self._dir / k, "rb") as src:
                        while chunk := src.read(8 << 20):
                            yield np.frombuffer(chunk, d)
            self._write_zip(tmp, m, dtypes, lens, chunks)
            os.replace(tmp, self.path)
        finally:
            self.abort(keep_output=True)
            if tmp.exists():
                tmp.unlink()
        return self.n_flows

    @staticmethod
    def _write_zip(tmp: Path, meta: dict, dtypes: dict, lens: dict, chunks) -> None:
        """The .npz (zip, stored): each column written from its chunks, never concatenated."""
        import zipfile

        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
            with zf.open("meta.npy", "w", force_zip64=True) as fh:
                np.lib.format.write_array(fh, np.array(json.dumps(meta)), allow_pickle=False)
            for k, d in dtypes.items():
                with zf.open(f"{k}.npy", "w", force_zip64=True) as fh:
                    np.lib.format.write_array_header_2_0(
                        fh, {"descr": np.lib.format.dtype_to_descr(np.dtype(d)),
                             "fortran_order": False, "shape": (lens[k],)})
                    for c in chunks(k):
                        fh.write(np.ascontiguousarray(c, dtype=d).data)
            with zf.open("offsets.npy", "w", force_zip64=True) as fh:
                np.lib.format.write_array_header_2_0(
                    fh, {"descr": "<i8", "fortran_order": False, "shape": (lens["_count"] + 1,)})
                fh.write(np.zeros(1, np.int64).data)
                total = 0
                for c in chunks("_count"):
                    if len(c):
                        cs = np.cumsum(c, dtype=np.int64) + total
                        total = int(cs[-1])
                        fh.write(cs.data)

    def abort(self, keep_output: bool = False) -> None:
        """Remove the temporary files (called by ``close``; call it on errors)."""
        import shutil

        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None


def write_flows(path: str | os.PathLike, flows: Iterable, meta: dict | None = None,
                *, spill_bytes: int = 64 << 20) -> int:
    """Write flows (``Flow`` objects and/or ``FlowBlock``s) to ``path`` (.npz); returns the count."""
    w = FlowFileWriter(path, spill_bytes=spill_bytes)
    try:
        w.add(flows)
    except BaseException:
        w.abort()
        raise
    return w.close(meta)


def read_columns(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict]:
    """The raw columns and the meta dict of an extract file (fastest way in, for training)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except FileNotFoundError:
        raise TrafficSNNError(f"{path}: no such flow file (make one with 'trafficsnn extract')") from None
    except (OSError, ValueError) as err:
        raise TrafficSNNError(f"{path}: not a readable flow file ({err})") from None
    try:
        meta = json.loads(str(arrays.pop("meta")))
    except (KeyError, ValueError):
        raise TrafficSNNError(f"{path}: not a trafficsnn flow file (no meta)") from None
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise TrafficSNNError(f"{path}: unsupported flow file {meta.get('format')} v{meta.get('version')} "
                              f"(this tool reads {FORMAT} v{VERSION})")
    missing = (set(FLOW_COLS) | set(PACKET_COLS) | {"offsets"}) - set(arrays)
    if missing:
        raise TrafficSNNError(f"{path}: flow file lacks columns {sorted(missing)}")
    off = arrays["offsets"]
    if len(off) != len(arrays["flow_id"]) + 1 or (len(off) and off[-1] != len(arrays["ts"])):
        raise TrafficSNNError(f"{path}: flow file is inconsistent (offsets do not match the packets)")
    return arrays, meta


class FlowSet:
    """Flows of an extract file: ``len``, indexing and iteration build ``Flow`` views lazily."""

    def __init__(self, arrays: dict[str, np.ndarray], meta: dict):
        self.columns, self.meta = arrays, meta
        self._off = arrays["offsets"].tolist()

    def __len__(self) -> int:
        return len(self._off) - 1

    def __getitem__(self, i: int) -> Flow:
        c = self.columns
        if i < 0:
            i += len(self)
        a, b = self._off[i], self._off[i + 1]
        key = FlowKey(int(c["vlan"][i]), int(c["proto"][i]), int(c["client_hi"][i]), int(c["client_lo"][i]),
                      int(c["client_port"][i]), int(c["server_hi"][i]), int(c["server_lo"][i]),
                      int(c["server_port"][i]))
        return Flow(int(c["flow_id"][i]), key, c["ts"][a:b], c["size"][a:b], c["direction"][a:b],
                    c["wire_len"][a:b], c["tcp_flags"][a:b], END_REASONS[int(c["end_reason"][i])],
                    int(c["c2s_pkts"][i]), int(c["s2c_pkts"][i]), int(c["c2s_bytes"][i]),
                    int(c["s2c_bytes"][i]))

    def __iter__(self) -> Iterator[Flow]:
        for i in range(len(self)):
            yield self[i]


def read_flows(path: str | os.PathLike) -> FlowSet:
    """Read an extract .npz back: a ``FlowSet`` (sequence of ``Flow``)."""
    arrays, meta = read_columns(path)
    return FlowSet(arrays, meta)


# ---------------------------------------------------------------- one vocabulary for tables
PROTO_NAMES = {1: "icmp", 2: "igmp", 6: "tcp", 17: "udp", 41: "ipv6", 47: "gre", 50: "esp", 51: "ah",
               58: "icmp6", 89: "ospf", 132: "sctp"}


def proto_name(proto: int) -> str:
    """IP protocol number -> its lower-case name (Zeek's spelling: tcp, udp, icmp...), else the number."""
    return PROTO_NAMES.get(int(proto), str(int(proto)))


# flow-level fields of every table output (CSV, Parquet, JSON lines, ``Flows.to_pandas``), in order
TABLE_FIELDS = ("flow_id", "community_id", "vlan", "proto", "proto_name", "client_ip", "client_port",
                "server_ip", "server_port", "first_ts", "last_ts", "duration", "end_reason",
                "c2s_pkts", "s2c_pkts", "c2s_bytes", "s2c_bytes", "c2s_ip_bytes", "s2c_ip_bytes")
# per-packet list columns (times relative to the flow's first packet)
PACKET_FIELDS = ("t", "size", "dir", "tcp_flags")
# where a Zeek conn.log field means the same thing (``--zeek-names``); the others keep their names
ZEEK_NAMES = {"first_ts": "ts", "proto": "ip_proto", "proto_name": "proto", "client_ip": "id.orig_h",
              "client_port": "id.orig_p", "server_ip": "id.resp_h", "server_port": "id.resp_p",
              "c2s_pkts": "orig_pkts", "s2c_pkts": "resp_pkts", "c2s_ip_bytes": "orig_ip_bytes",
              "s2c_ip_bytes": "resp_ip_bytes"}
TABLE_FORMATS = {".npz": "npz", ".jsonl": "jsonl", ".json": "jsonl", ".csv": "csv", ".parquet": "parquet"}


def format_of(path: str, fmt: str | None = None) -> str:
    """The output format named by ``fmt`` or by ``path``'s extension; unknown ones are an error."""
    if fmt:
        if fmt not in set(TABLE_FORMATS.values()):
            raise TrafficSNNError(f"unknown format {fmt!r} (choose one of npz, jsonl, csv, parquet)")
        return fmt
    if str(path) == "-":
        return "jsonl"
    ext = Path(str(path)).suffix.lower()
    if ext not in TABLE_FORMATS:
        raise TrafficSNNError(f"cannot tell the format of {path}: give a name ending in "
                              f"{', '.join(TABLE_FORMATS)} (or --format)")
    return TABLE_FORMATS[ext]


def _ips(hi: np.ndarray, lo: np.ndarray) -> list[str]:
    from ..packets.batch import words_to_ip

    cache: dict[tuple[int, int], str] = {}
    out = []
    for h, l in zip(hi.tolist(), lo.tolist()):
        v = cache.get((h, l))
        if v is None:
            v = cache[(h, l)] = words_to_ip(h, l)
        out.append(v)
    return out


def table_columns(arrays: dict[str, np.ndarray], *, packets: bool = True, zeek_names: bool = False,
                  packet_lists: str = "numpy") -> dict[str, object]:
    """Columnar flows (``FLOW_COLS`` + ``offsets`` + packet columns, as in an extract .npz) -> the table
    vocabulary: ``TABLE_FIELDS`` (numpy arrays or lists of str) and, with ``packets``, ``PACKET_FIELDS``
    as per-flow arrays (``packet_lists="numpy"``: a list of numpy arrays; ``"csr"``: (offsets, values)
    pairs, for pyarrow). ``zeek_names`` renames fields as ``ZEEK_NAMES`` says."""
    from .community_id import community_ids

    a = arrays
    off = a["offsets"].astype(np.int64)
    n = len(off) - 1
    first = a["first_ts"]
    d = a["direction"]
    size = a["size"].astype(np.int64)
    flow_of = np.repeat(np.arange(n), np.diff(off))
    ip_c2s = np.bincount(flow_of, weights=np.where(d == 0, size, 0), minlength=n).astype(np.int64)
    ip_s2c = np.bincount(flow_of, weights=np.where(d == 0, 0, size), minlength=n).astype(np.int64)
    reasons = np.array(END_REASONS, dtype=object)
    cols: dict[str, object] = {
        "flow_id": a["flow_id"], "community_id": community_ids(a), "vlan": a["vlan"], "proto": a["proto"],
        "proto_name": [proto_name(p) for p in a["proto"].tolist()],
        "client_ip": _ips(a["client_hi"], a["client_lo"]), "client_port": a["client_port"],
        "server_ip": _ips(a["server_hi"], a["server_lo"]), "server_port": a["server_port"],
        "first_ts": first, "last_ts": a["last_ts"], "duration": a["last_ts"] - first,
        "end_reason": reasons[a["end_reason"].astype(np.int64)].tolist() if n else [],
        "c2s_pkts": a["c2s_pkts"], "s2c_pkts": a["s2c_pkts"], "c2s_bytes": a["c2s_bytes"],
        "s2c_bytes": a["s2c_bytes"], "c2s_ip_bytes": ip_c2s, "s2c_ip_bytes": ip_s2c,
    }
    if packets:
        rel = a["ts"] - first[flow_of] if n else a["ts"]
        vals = {"t": rel, "size": a["size"], "dir": a["direction"], "tcp_flags": a["tcp_flags"]}
        for k, v in vals.items():
            cols[k] = (off, v) if packet_lists == "csr" else np.split(v, off[1:-1]) if n else []
    if zeek_names:
        cols = {ZEEK_NAMES.get(k, k): v for k, v in cols.items()}
    return cols


class TableWriter:
    """Streams flows into a CSV or Parquet file (atomically: a ``.tmp`` file renamed at ``close``).

    Flows are gathered in columns and written every ``chunk_flows`` flows (a Parquet row group, or
    CSV rows), so memory stays bounded. CSV holds the flow-level fields only; Parquet also holds the
    per-packet arrays as list columns unless ``packets=False``.
    """

    def __init__(self, path: str | os.PathLike, fmt: str, *, packets: bool = True, zeek_names: bool = False,
                 chunk_flows: int = 100_000):
        if fmt not in ("csv", "parquet"):
            raise ValueError(f"TableWriter writes csv or parquet, not {fmt!r}")
        if fmt == "parquet":
            _need_pyarrow()
        self.path, self.fmt = Path(path), fmt
        self.packets = packets and fmt == "parquet"
        self.zeek_names, self.chunk_flows = zeek_names, int(chunk_flows)
        self._tmp = self.path.with_name(self.path.name + ".tmp")
        self._buf = FlowColumns()
        self._fh = None
        self._pq = None
        self.n_flows = 0

    def add(self, items: Iterable) -> None:
        items = list(items)
        self._buf.add(items)
        self.n_flows += sum(len(x) if isinstance(x, FlowBlock) else 1 for x in items)
        if len(self._buf) >= self.chunk_flows:
            self._write()

    def _write(self, final: bool = False) -> None:
        if not len(self._buf) and not (final and self._fh is None and self._pq is None):
            return
        cols = table_columns(self._buf.arrays(), packets=self.packets, zeek_names=self.zeek_names,
                             packet_lists="csr")
        self._buf = FlowColumns()
        if self.fmt == "csv":
            self._write_csv(cols)
        else:
            self._write_parquet(cols)

    def _write_csv(self, cols: dict) -> None:
        import csv

        if self._fh is None:
            self._fh = open(self._tmp, "w", encoding="utf-8", newline="")
            self._csv = csv.writer(self._fh)
            self._csv.writerow(list(cols))
        lists = []
        for k, v in cols.items():
            if isinstance(v, np.ndarray) and v.dtype.kind == "f":
                lists.append([repr(x) for x in v.tolist()])
            else:
                lists.append(["" if x is None else x for x in (v.tolist() if isinstance(v, np.ndarray) else v)])
        self._csv.writerows(zip(*lists))

    def _write_parquet(self, cols: dict) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        arrs = {}
        for k, v in cols.items():
            if isinstance(v, tuple):
                off, vals = v
                arrs[k] = pa.ListArray.from_arrays(pa.array(off.astype(np.int32) if off[-1] < 2**31 else off,
                                                            type=pa.int32() if off[-1] < 2**31 else pa.int64()),
                                                   pa.array(vals))
            else:
                arrs[k] = pa.array(v, type=pa.string()) if isinstance(v, list) else pa.array(v)
        table = pa.table(arrs)
        if self._pq is None:
            self._pq = pq.ParquetWriter(str(self._tmp), table.schema, compression="zstd")
        self._pq.write_table(table)

    def close(self) -> int:
        """Write what is left and move the file into place; returns the number of flows."""
        try:
            self._write(final=True)
            if self._fh is not None:
                self._fh.close()
            if self._pq is not None:
                self._pq.close()
            os.replace(self._tmp, self.path)
        finally:
            self.abort(keep_output=True)
        return self.n_flows

    def abort(self, keep_output: bool = False) -> None:
        for h in (self._fh, self._pq):
            if h is not None:
                try:
                    h.close()
                except Exception:   # noqa: BLE001 - best effort on the way out
                    pass
        self._fh = self._pq = None
        if self._tmp.exists():
            self._tmp.unlink()
        if not keep_output:
            self.path.unlink(missing_ok=True)


def _need_pyarrow() -> None:
    try:
        import pyarrow  # noqa: F401
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        raise TrafficSNNError("Parquet needs pyarrow: pip install 'trafficsnn[parquet]'") from None


def flow_to_json(f: Flow, zeek_names: bool = False) -> dict:
    """One flow as a JSON-ready dict (the ``TABLE_FIELDS`` + ``PACKET_FIELDS`` vocabulary; packet times
    relative to the first packet, in seconds)."""
    from .community_id import flow_community_id

    k = f.key
    rel = (f.ts - f.first_ts) if len(f.ts) else f.ts
    size = f.size.astype(np.int64)
    c2s_ip = int(size[f.direction == 0].sum())
    d = {
        "flow_id": f.flow_id, "community_id": flow_community_id(k), "vlan": k.vlan, "proto": k.proto,
        "proto_name": proto_name(k.proto), "client_ip": k.client_ip, "client_port": k.client_port,
        "server_ip": k.server_ip, "server_port": k.server_port,
        "first_ts": round(f.first_ts, 6), "last_ts": round(f.last_ts, 6),
        "duration": round(f.duration, 6), "end_reason": f.end_reason,
        "c2s_pkts": f.c2s_pkts, "s2c_pkts": f.s2c_pkts, "c2s_bytes": f.c2s_bytes, "s2c_bytes": f.s2c_bytes,
        "c2s_ip_bytes": c2s_ip, "s2c_ip_bytes": int(size.sum()) - c2s_ip,
        "t": np.round(rel, 6).tolist(), "size": f.size.tolist(), "dir": f.direction.tolist(),
        "tcp_flags": f.tcp_flags.tolist(),
    }
    if zeek_names:
        d = {ZEEK_NAMES.get(n, n): v for n, v in d.items()}
    return d


def write_jsonl(fh, flows: Iterable[Flow], zeek_names: bool = False) -> int:
    """Write one JSON object per flow to the text stream ``fh``; returns the count."""
    n = 0
    for f in flows:
        fh.write(json.dumps(flow_to_json(f, zeek_names), separators=(",", ":")))
        fh.write("\n")
        n += 1
    return n
