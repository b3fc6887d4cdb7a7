"""Labelled samples from captures: ISCX layouts, labelled folders and label CSVs.

A *sample* is what the model sees: a paper window (paper preset: ``paper_windows`` +
the paper histogram) or the first ``n_steps`` x ``bin_s`` seconds of a whole flow
(improved preset: ``ImprovedEncoder`` on one clock), built by the very functions the
daemon uses (``trafficsnn.flows`` for flows and windows, ``trafficsnn.snn.encoding``
for inputs). Each sample also carries classic flow statistics (for the tree baseline)
and its provenance (capture, flow, 5-tuple) for grouped splits and manifests.

Three sources of labels:
- ``iscx``: one label per capture file from name rules (``labels.LabelRules``);
- ``folder``: class = first sub-folder under the data root;
- ``csv``: rows naming flows by capture file and 5-tuple (nDPI ``task.csv`` columns
  ``pcap, l4, src_ip, src_port, dst_ip, dst_port, task_class`` [, ``cap20``]), matched to
  our bidirectional flows by (L4 protocol, unordered endpoint pair).

Extraction is cached per capture (``.npz``, never pickle) under a key made of the
file's content hash and every parameter that changes the samples.
"""
from __future__ import annotations

import csv
import dataclasses
import hashlib
import ipaddress
import json
import logging
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from ..errors import ConfigError
from .features import HEAD_COLUMNS, HEAD_PACKETS, N_FEATURES, flow_stats, packet_head, packet_stats, window_head

log = logging.getLogger(__name__)

CAPTURE_SUFFIXES = (".pcap", ".pcapng", ".cap", ".dmp")
# -j 0 (every core) starts worker processes only for more than this many bytes of uncached captures:
# a worker costs ~0.7 CPU-s to start, one core extracts ~350 MB/s (bench/RESULTS.md, bench_prepare.py)
AUTO_JOBS_MIN_BYTES = 256 << 20
CACHE_VERSION = 3   # 2: packet-clocked encoder, monotonic flow timestamps; 3: packet heads for baselines
L4_NUMBERS = {"TCP": 6, "UDP": 17, "ICMP": 1, "ICMPV6": 58, "SCTP": 132, "GRE": 47, "ESP": 50}


def usable_cores() -> int:
    """Cores this process may run on (its affinity mask, else os.cpu_count()): what ``-j 0`` means."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def default_cache_dir() -> Path:
    env = os.environ.get("TRAFFICSNN_CACHE")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "trafficsnn" / "samples"


# ---------------------------------------------------------------- sample containers
def csr_take(ev_off: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(event positions, events per sample) of samples ``idx`` of a CSR event store, in order."""
    idx = np.asarray(idx, np.int64)
    lens = np.diff(ev_off)[idx]
    firsts = np.cumsum(lens) - lens
    take = np.arange(int(lens.sum()), dtype=np.int64) + np.repeat(ev_off[idx] - firsts, lens)
    return take, lens


@dataclass
class CaptureSamples:
    """Every flow of one capture and the samples built from it (unlabelled; cached)."""

    proto: np.ndarray          # (F,) uint8
    client: np.ndarray         # (F,) str
    cport: np.ndarray          # (F,) int32
    server: np.ndarray         # (F,) str
    sport: np.ndarray          # (F,) int32
    packets: np.ndarray        # (F,) int64 packets of the whole flow
    s_flow: np.ndarray         # (S,) int32 flow index of each sample
    s_window: np.ndarray       # (S,) int32 window index t (0 for whole-flow samples)
    ev_off: np.ndarray         # (S+1,) int64 offsets into the event arrays
    ev_step: np.ndarray        # int16
    ev_neuron: np.ndarray      # int16
    ev_value: np.ndarray       # float32
    features: np.ndarray       # (S, N_FEATURES) float32
    head: np.ndarray           # (S, HEAD_PACKETS, len(HEAD_COLUMNS)) float32: first packets (features.packet_head)
    damage: np.ndarray = field(default_factory=lambda: np.zeros(0, "U1"))  # what was wrong with the file (0 or 1)

    def save(self, path: Path) -> None:
        tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")   # several processes may share one cache
        np.savez(tmp, **{f.name: getattr(self, f.name) for f in dataclasses.fields(self)})
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> "CaptureSamples":
        with np.load(path, allow_pickle=False) as z:
            return cls(**{f.name: z[f.name] for f in dataclasses.fields(cls)})


@dataclass
class SampleSet:
    """Labelled samples in CSR form plus provenance; ``batch(idx)`` gives a model input."""

    classes: list[str]
    y: np.ndarray              # (S,) int64
    capture: np.ndarray        # (S,) str, relative to the data root
    flow: np.ndarray           # (S,) str "capture#index 5-tuple"
    window: np.ndarray         # (S,) int32
    cap20: np.ndarray          # (S,) bool (True when the source has no cap20 column)
    ev_off: np.ndarray
    ev_step: np.ndarray
    ev_neuron: np.ndarray
    ev_value: np.ndarray
    features: np.ndarray
    encoding: dict
    n_steps: int
    n_inputs: int
    summary: dict = field(default_factory=dict)
    head: np.ndarray | None = None   # (S, HEAD_PACKETS, 5) first packets of each sample (features.packet_head)

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def sample(self, i: int):
        from ..snn.encoding import SparseSample

        a, b = int(self.ev_off[i]), int(self.ev_off[i + 1])
        return SparseSample(self.ev_step[a:b], self.ev_neuron[a:b], self.ev_value[a:b])

    def batch(self, idx: Sequence[int], device=None, dtype=None):
        """A ``snn.encoding.SparseBatch`` of the samples ``idx`` (H3's collate, on the CSR arrays)."""
        from ..snn.encoding import collate_events

        take, lens = csr_take(self.ev_off, idx)
        return collate_events(lens, self.ev_step[take], self.ev_neuron[take], self.ev_value[take], self.n_steps,
                              self.n_inputs, dtype=dtype, device=device)

    def subset(self, idx: Sequence[int] | np.ndarray) -> "SampleSet":
        idx = np.asarray(idx, np.int64)
        take, lens = csr_take(self.ev_off, idx)
        return SampleSet(
            list(self.classes), self.y[idx], self.capture[idx], self.flow[idx], self.window[idx], self.cap20[idx],
            np.r_[0, np.cumsum(lens)].astype(np.int64), self.ev_step[take], self.ev_neuron[take],
            self.ev_value[take], self.features[idx], dict(self.encoding), self.n_steps, self.n_inputs,
            dict(self.summary), None if self.head is None else self.head[idx],
        )

    def class_counts(self) -> dict[str, int]:
        c = np.bincount(self.y, minlength=len(self.classes))
        return {k: int(v) for k, v in zip(self.classes, c)}


# ---------------------------------------------------------------- hashing + cache
def file_sha256(path: Path, memo: dict | None = None) -> str:
    st = path.stat()
    key = str(path.resolve())
    if memo is not None and key in memo and memo[key][:2] == [st.st_size, st.st_mtime_ns]:
        return memo[key][2]
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    digest = h.hexdigest()
    if memo is not None:
        memo[key] = [st.st_size, st.st_mtime_ns, digest]
    return digest


def _cache_key(digest: str, params: dict) -> str:
    blob = json.dumps({"v": CACHE_VERSION, "file": digest, **params}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:40]


# ---------------------------------------------------------------- extraction
def _truncate(flow, n: int | None):
    if not n or len(flow.ts) <= n:
        return flow
    return dataclasses.replace(flow, ts=flow.ts[:n], size=flow.size[:n], direction=flow.direction[:n],
                               wire_len=flow.wire_len[:n], tcp_flags=flow.tcp_flags[:n])


def extract_capture(path: Path, encoder, max_packets: int | None = None,
                    flow_opts: dict | None = None) -> CaptureSamples:
    """All flows of one capture and their samples (see module doc); no labels involved."""
    from ..flows import flows_from_capture

    opts = {"idle_timeout": None, "active_timeout": None, "tcp_close": False, **(flow_opts or {})}
    paper = getattr(encoder, "kind", "") == "paper"
    if paper:
        from ..flows import paper_windows
    keys: list[tuple] = []
    packets: list[int] = []
    s_flow: list[int] = []
    s_win: list[int] = []
    evs: list = []
    feats: list[np.ndarray] = []
    heads: list[np.ndarray] = []
    errors: list = []
    for fi, flow in enumerate(flows_from_capture([path], errors=errors, **opts)):
        k = flow.key
        keys.append((k.proto, k.client_ip, k.client_port, k.server_ip, k.server_port))
        packets.append(int(flow.packets))
        fl = _truncate(flow, max_packets)
        if len(fl.ts) == 0:
            continue
        if paper:
            for w in paper_windows(fl):
                evs.append(encoder.window(w))
                feats.append(flow_stats(w.t1, w.s1, w.t2, w.s2, proto=fl.key.proto))
                heads.append(window_head(w, fl.key.proto))
                s_flow.append(fi)
                s_win.append(int(w.t_index))
        else:
            rel = np.asarray(fl.ts, np.float64) - float(fl.ts[0])
            evs.append(encoder.flow(fl))      # the encoder's own stream() on the whole flow
            keep = encoder.window_mask(rel)   # the baselines see exactly the packets the sample covers
            pk = (rel[keep], np.asarray(fl.size)[keep], np.asarray(fl.direction)[keep], np.asarray(fl.tcp_flags)[keep],
                  fl.key.proto)
            feats.append(packet_stats(*pk))
            heads.append(packet_head(*pk))
            s_flow.append(fi)
            s_win.append(0)
    lens = [len(e[0]) for e in evs]
    cat = (lambda i, dt: np.concatenate([np.asarray(e[i], dt) for e in evs]) if evs else np.zeros(0, dt))
    return CaptureSamples(
        proto=np.array([k[0] for k in keys], np.uint8),
        client=np.array([k[1] for k in keys], dtype=str) if keys else np.zeros(0, "U1"),
        cport=np.array([k[2] for k in keys], np.int32),
        server=np.array([k[3] for k in keys], dtype=str) if keys else np.zeros(0, "U1"),
        sport=np.array([k[4] for k in keys], np.int32),
        packets=np.array(packets, np.int64),
        s_flow=np.array(s_flow, np.int32), s_window=np.array(s_win, np.int32),
        ev_off=np.r_[0, np.cumsum(lens)].astype(np.int64),
        ev_step=cat(0, np.int16), ev_neuron=cat(1, np.int16), ev_value=cat(2, np.float32),
        features=np.stack(feats).astype(np.float32) if feats else np.zeros((0, N_FEATURES), np.float32),
        head=np.stack(heads) if heads else np.zeros((0, HEAD_PACKETS, len(HEAD_COLUMNS)), np.float32),
        damage=np.array([str(errors[0])], dtype=str) if errors else np.zeros(0, "U1"),
    )


def _extract_job(path: str, enc_spec: dict, max_packets, flow_opts, out: str) -> str:
    """Worker-process body of ``SampleCache.prefetch`` (module level so it can be pickled by spawn)."""
    from ..snn.registry import encoder_for

    extract_capture(Path(path), encoder_for(enc_spec), max_packets, flow_opts).save(Path(out))
    return out


class SampleCache:
    """Per-capture extraction results on disk, keyed by content hash + parameters."""

    def __init__(self, root: str | Path | None = None, enabled: bool = True):
        self.root = Path(root) if root is not None else default_cache_dir()
        self.enabled = enabled
        self.hits = 0
        self.misses = 0
        self.prefetched = 0   # extracted by worker processes (then read back as hits)
        self._memo_path = self.root / "hashes.json"
        self._memo: dict = {}
        if enabled:
            self.root.mkdir(parents=True, exist_ok=True)
            try:
                self._memo = json.loads(self._memo_path.read_text())
            except (OSError, ValueError):
                self._memo = {}

    def path_for(self, path: Path, encoder, max_packets, flow_opts) -> Path:
        """Cache file of one capture's extraction with these parameters."""
        params = {"encoding": encoder.spec(), "max_packets": max_packets, "flow_opts": flow_opts or {},
                  "features": N_FEATURES, "damage": 1}
        return self.root / f"{_cache_key(file_sha256(path, self._memo), params)}.npz"

    def prefetch(self, paths: Sequence[Path], encoder, max_packets, flow_opts, jobs: int, progress: bool) -> None:
        """Extract the captures missing from the cache in ``jobs`` worker processes.

        ``jobs`` 0 = one per core, when there is enough to extract to pay for starting them
        (``AUTO_JOBS_MIN_BYTES``). Largest captures first, so that one big file started last
        does not leave the other workers idle (ISCX mixes 1 MB and multi-GB captures).
        """
        auto = jobs == 0
        jobs = usable_cores() if auto else jobs
        if not self.enabled or jobs <= 1:
            return
        todo = [(p, self.path_for(p, encoder, max_packets, flow_opts)) for p in paths]
        todo = [(p, f, p.stat().st_size) for p, f in todo if not f.exists()]
        if len(todo) < 2 or (auto and sum(t[2] for t in todo) < AUTO_JOBS_MIN_BYTES):
            return
        todo.sort(key=lambda t: -t[2])
        jobs = min(jobs, len(todo))
        self.prefetched += len(todo)
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor, as_completed

        spec = encoder.spec()
        with ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn")) as ex:
            futs = [ex.submit(_extract_job, str(p), spec, max_packets, flow_opts, str(f)) for p, f, _ in todo]
            it = as_completed(futs)
            if progress:
                from tqdm import tqdm

                it = tqdm(it, total=len(futs), desc=f"extract ({jobs} jobs)", unit="file", leave=False, disable=None)
            for fut in it:
                fut.result()

    def get(self, path: Path, encoder, max_packets, flow_opts) -> CaptureSamples:
        if not self.enabled:
            self.misses += 1
            return extract_capture(path, encoder, max_packets, flow_opts)
        f = self.path_for(path, encoder, max_packets, flow_opts)
        if f.exists():
            try:
                out = CaptureSamples.load(f)
                self.hits += 1
                return out
            except (OSError, ValueError, KeyError):
                log.warning("ignoring unreadable cache file %s", f)
        self.misses += 1
        out = extract_capture(path, encoder, max_packets, flow_opts)
        out.save(f)
        return out

    def flush(self) -> None:
        if self.enabled:
            tmp = self._memo_path.with_suffix(f".{os.getpid()}.tmp")   # train --nproc: every rank flushes
            tmp.write_text(json.dumps(self._memo))
            os.replace(tmp, self._memo_path)


# ---------------------------------------------------------------- label sources
def find_captures(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in CAPTURE_SUFFIXES)


def _norm_ip(s: str) -> str:
    try:
        ip = ipaddress.ip_address(s.strip())
    except ValueError:
        return s.strip().lower()
    if ip.version == 6 and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return ip.compressed


def _endpoint_key(proto: int, a: str, pa: int, b: str, pb: int) -> tuple:
    x, y = (_norm_ip(a), int(pa)), (_norm_ip(b), int(pb))
    return (int(proto),) + (x + y if x <= y else y + x)


@dataclass
class CsvLabels:
    """Rows of a label CSV grouped by capture file name."""

    by_pcap: dict[str, dict[tuple, tuple[str, bool]]]
    classes: list[str]
    rows: int

    @classmethod
    def read(cls, path: str | Path, class_column: str = "task_class") -> "CsvLabels":
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"label CSV not found: {p}")
        with open(p, newline="") as fh:
            rd = csv.DictReader(fh)
            need = {"pcap", "l4", "src_ip", "src_port", "dst_ip", "dst_port", class_column}
            missing = need - set(rd.fieldnames or [])
            if missing:
                raise ConfigError(f"{p}: label CSV lacks column(s) {sorted(missing)} (needs {sorted(need)})")
            by: dict[str, dict] = defaultdict(dict)
            classes: set[str] = set()
            n = 0
            for row in rd:
                l4 = row["l4"].strip().upper()
                proto = L4_NUMBERS.get(l4) if not l4.isdigit() else int(l4)
                if proto is None:
                    continue
                cls_ = row[class_column].strip()
                if not cls_:
                    continue
                cap = row.get("cap20", "1").strip() not in ("0", "false", "False")
                key = _endpoint_key(proto, row["src_ip"], row["src_port"], row["dst_ip"], row["dst_port"])
                by[row["pcap"].strip()][key] = (cls_, cap)
                classes.add(cls_)
                n += 1
        return cls(dict(by), sorted(classes), n)


def detect_source(root: Path, labels_csv, rules) -> str:
    if labels_csv:
        return "csv"
    if rules:
        return "iscx"
    names = {p.name.lower() for p in root.iterdir() if p.is_dir()} if root.is_dir() else set()
    if names & {"nonvpn-pcaps", "vpn-pcaps", "tor", "nontor"}:
        return "iscx"
    return "folder"


def build_dataset(
    data: str | Path,
    encoder,
    *,
    labels_csv: str | Path | None = None,
    rules: str | Path | None = None,
    task: str = "all",
    source: str = "auto",
    classes: Sequence[str] | None = None,
    max_packets: int | None = None,
    min_packets: int = 10,
    cache: SampleCache | None = None,
    flow_opts: dict | None = None,
    progress: bool = False,
    jobs: int = 1,
) -> SampleSet:
    """Labelled samples of every capture under ``data`` (see module doc for the sources).

    ``classes`` fixes the label order (e.g. a model's classes at evaluation); samples of
    other classes are dropped. ``min_packets`` (whole-flow packets, class-agnostic) applies
    to the iscx and folder sources; a label CSV names its flows itself.
    """
    root = Path(data)
    if not root.exists():
        raise ConfigError(f"data path not found: {root}")
    if isinstance(encoder, str) or isinstance(encoder, dict):
        from ..snn.registry import encoder_for

        encoder = encoder_for(encoder)
    src = detect_source(root, labels_csv, rules) if source == "auto" else source
    if src not in ("iscx", "folder", "csv"):
        raise ConfigError(f"unknown data source {src!r} (use auto, iscx, folder or csv)")
    caps = [root] if root.is_file() else find_captures(root)
    base = root.parent if root.is_file() else root
    if not caps:
        raise ConfigError(f"no capture files ({', '.join(CAPTURE_SUFFIXES)}) under {root}")
    cache = cache or SampleCache()
    summary: dict[str, Any] = {"source": src, "root": str(root), "captures": 0, "excluded_captures": {},
                               "max_packets": max_packets}
    per_cap_label: dict[Path, str] = {}
    csv_labels = None
    if src == "iscx":
        from .labels import LabelRules

        lr = LabelRules.load(rules)
        names = lr.classes(task)
        for p in caps:
            lab = lr.label(p.relative_to(base).as_posix(), task)
            if lab.excluded:
                summary["excluded_captures"][p.relative_to(base).as_posix()] = lab.reason
            else:
                per_cap_label[p] = lab.label
        summary["rules"] = lr.source
    elif src == "folder":
        for p in caps:
            rel = p.relative_to(base)
            if len(rel.parts) < 2:
                summary["excluded_captures"][rel.as_posix()] = "not inside a class sub-folder"
            else:
                per_cap_label[p] = rel.parts[0]
        names = sorted(set(per_cap_label.values()))
    else:
        csv_labels = CsvLabels.read(labels_csv)
        names = csv_labels.classes
        by_name = {}
        for p in caps:
            by_name.setdefault(p.name, p)
        missing = [n for n in csv_labels.by_pcap if n not in by_name]
        if missing:
            summary["csv_pcaps_not_found"] = missing
            log.warning("%d capture(s) named in %s not found under %s", len(missing), labels_csv, root)
        caps = [by_name[n] for n in sorted(csv_labels.by_pcap) if n in by_name]
    if classes is not None:
        names = list(classes)
    index = {c: i for i, c in enumerate(names)}
    parts: list[dict] = []
    unmatched_rows = 0
    other: dict[str, int] = {}      # flows whose label is not among ``classes``: left out, and said so
    wanted = [p for p in caps if src == "csv" or p in per_cap_label]
    cache.prefetch(wanted, encoder, max_packets, flow_opts, jobs, progress)
    it: Iterable[Path] = caps
    if progress:
        from tqdm import tqdm

        it = tqdm(caps, desc="captures", unit="file", leave=False, disable=None)
    for p in it:
        rel = p.relative_to(base).as_posix()
        if src != "csv" and p not in per_cap_label:
            continue
        cs = cache.get(p, encoder, max_packets, flow_opts)
        summary["captures"] += 1
        n_flows = cs.proto.shape[0]
        if cs.damage.size:
            # a cut or unreadable capture: say which and why (the flows before the damage are used)
            summary.setdefault("damaged_captures", {})[rel] = {"error": str(cs.damage[0]), "flows": int(n_flows)}
            log.warning("%s capture %s: %s", "unreadable" if not n_flows else f"damaged ({n_flows} flows before the "
                        "damage used)", rel, cs.damage[0])
        flow_label = np.full(n_flows, -1, np.int64)
        flow_cap20 = np.ones(n_flows, bool)
        if src == "csv":
            rows = csv_labels.by_pcap.get(p.name, {})
            found = set()
            for fi in range(n_flows):
                k = _endpoint_key(int(cs.proto[fi]), str(cs.client[fi]), int(cs.cport[fi]), str(cs.server[fi]),
                                  int(cs.sport[fi]))
                if k in rows:
                    lab, c20 = rows[k]
                    found.add(k)
                    if lab in index:
                        flow_label[fi] = index[lab]
                        flow_cap20[fi] = c20
                    else:
                        other[lab] = other.get(lab, 0) + 1
            unmatched_rows += len(set(rows) - found)
        else:
            lab = per_cap_label[p]
            if lab in index:
                flow_label[cs.packets >= min_packets] = index[lab]
            else:
                other[lab] = other.get(lab, 0) + int((cs.packets >= min_packets).sum())
        keep = flow_label[cs.s_flow] >= 0 if cs.s_flow.size else np.zeros(0, bool)
        if not keep.any():
            continue
        sidx = np.flatnonzero(keep)
        parts.append({"cs": cs, "sidx": sidx, "y": flow_label[cs.s_flow[sidx]], "cap": rel,
                      "cap20": flow_cap20[cs.s_flow[sidx]]})
    cache.flush()
    if other:
        summary["left_out_classes"] = dict(sorted(other.items()))
        log.warning("%d flow(s) of classes not in %s were left out: %s", sum(other.values()),
                    "the model" if classes is not None else "the task",
                    ", ".join(f"{k} ({v})" for k, v in sorted(other.items())))
    if src == "csv":
        summary["csv_rows"] = csv_labels.rows
        summary["csv_rows_unmatched"] = unmatched_rows
    summary["cache"] = {"hits": cache.hits - cache.prefetched, "misses": cache.misses + cache.prefetched,
                        "dir": str(cache.root) if cache.enabled else None}
    if not parts:
        raise ConfigError(f"no labelled samples found under {root} (source {src}); check the labels and --min-packets")
    ys, caps_, flows_, wins, c20s, lens, steps, neurons, values, feats = ([] for _ in range(10))
    heads: list[np.ndarray] = []
    for part in parts:
        cs, sidx = part["cs"], part["sidx"]
        take, n_ev = csr_take(cs.ev_off, sidx)
        steps.append(cs.ev_step[take])
        neurons.append(cs.ev_neuron[take])
        values.append(cs.ev_value[take])
        lens.append(n_ev)
        names_of = {fi: f"{part['cap']}#{fi} {cs.client[fi]}:{cs.cport[fi]}<->{cs.server[fi]}:{cs.sport[fi]}/"
                        f"{cs.proto[fi]}" for fi in set(cs.s_flow[sidx].tolist())}
        flows_ += [names_of[fi] for fi in cs.s_flow[sidx].tolist()]
        ys.append(part["y"])
        caps_ += [part["cap"]] * len(sidx)
        wins.append(cs.s_window[sidx])
        c20s.append(part["cap20"])
        feats.append(cs.features[sidx])
        heads.append(cs.head[sidx])
    out = SampleSet(
        classes=list(names), y=np.concatenate(ys).astype(np.int64), capture=np.array(caps_, dtype=str),
        flow=np.array(flows_, dtype=str), window=np.concatenate(wins).astype(np.int32),
        cap20=np.concatenate(c20s).astype(bool), ev_off=np.r_[0, np.cumsum(np.concatenate(lens))].astype(np.int64),
        ev_step=np.concatenate(steps).astype(np.int16), ev_neuron=np.concatenate(neurons).astype(np.int16),
        ev_value=np.concatenate(values).astype(np.float32), features=np.concatenate(feats).astype(np.float32),
        encoding=encoder.spec(), n_steps=int(encoder.n_steps), n_inputs=int(encoder.n_inputs), summary=summary,
        head=np.concatenate(heads).astype(np.float32),
    )
    summary["samples"] = len(out)
    summary["flows"] = len(set(out.flow.tolist()))
    summary["class_counts"] = out.class_counts()
    return out
