"""``trafficsnn extract``: captures -> flows (columnar .npz, or JSON lines)."""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import click

from ..errors import ConfigError, TrafficSNNError
from ._options import flow_table_options


def _keep_freed_memory() -> None:
    """Ask glibc to keep freed memory for reuse (a fresh CLI process otherwise pays a page fault,
    and the kernel's zeroing, for every batch's arrays again: ~20 % of its CPU on a 2 M-packet
    capture). Arrays up to 32 MiB come from the heap, and up to 256 MiB freed at its top stay
    mapped; peak memory is unchanged. A no-op where the C library is not glibc."""
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    mallopt(m_mmap_threshold, 32 << 20)
    mallopt(m_trim_threshold, 256 << 20)


def _timeout(value: float | None) -> float | None:
    return None if value is None or value <= 0 else value


def extract_files(paths: list[str], out: str, *, fmt: str = "npz", idle_timeout: float | None = 120.0,
                  active_timeout: float | None = 1800.0, max_flows: int | None = 1_000_000,
                  tcp_close: bool = True, max_packets: int | None = None, strict: bool = False,
                  progress: bool = False, batch_size: int = 65536, warn=None, zeek_names: bool = False,
                  packets: bool = True) -> dict:
    """Read, decode and assemble flows from ``paths`` and write them to ``out``.

    ``fmt``: npz (columnar, what training reads), jsonl, csv or parquet (the table vocabulary of
    ``flows.store.TABLE_FIELDS``; ``zeek_names`` uses Zeek conn.log names; ``packets=False``
    leaves the per-packet lists out of Parquet; CSV never has them).

    Each file gets its own flow table. Damaged files give one warning (file, byte offset,
    reason) through ``warn`` and the packets before the damage are kept; ``strict`` raises
    instead. Returns a summary dict (files, packets, flows, skipped frames, errors, seconds).
    """
    from ..flows import Columnar, FlowTable, WholeFlows
    from ..flows.store import FlowFileWriter, TableWriter, write_jsonl
    from ..packets import read_packets

    warn = warn or (lambda msg: click.echo(f"warning: {msg}", err=True))
    opts = dict(idle_timeout=idle_timeout, active_timeout=active_timeout, max_flows=max_flows,
                tcp_close=tcp_close, max_packets=max_packets)
    summary = {"files": 0, "packets": 0, "flows": 0, "skipped": 0, "errors": 0, "evicted": 0, "damaged": []}
    t0 = time.perf_counter()
    total = sum(os.path.getsize(p) for p in paths)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc="extract",
                   file=sys.stderr, dynamic_ncols=True)
    if fmt == "npz":
        cols = FlowFileWriter(out)
    elif fmt in ("csv", "parquet"):
        cols = TableWriter(out, fmt, packets=packets, zeek_names=zeek_names)
    else:
        cols = None
    jfh = None
    if fmt == "jsonl":
        jfh = sys.stdout if out == "-" else open(out, "w", encoding="utf-8")

    def sink(flows) -> None:
        if cols is not None:
            cols.add(flows)             # counts them: cols.n_flows
        else:
            summary["flows"] += write_jsonl(jfh, flows, zeek_names)

    try:
        for path in paths:
            table = FlowTable(policy=Columnar() if cols is not None else WholeFlows(), **opts)
            reader = read_packets(path, batch_size=batch_size, strict=strict)
            done_before = bar.n if bar is not None else 0
            end = done_before + os.path.getsize(path) if bar is not None else 0
            n_file = 0
            for batch in reader:
                n_file += len(batch)
                sink(table.add(batch))
                if bar is not None:
                    cs = reader.stats["capture"]
                    pos = cs.get("captured_bytes", 0) + 16 * cs.get("frames", 0)
                    bar.update(max(0, min(done_before + pos, end) - bar.n))
            sink(table.flush())
            summary["files"] += 1
            summary["evicted"] += table.stats["evicted"]
            summary["packets"] += n_file
            summary["skipped"] += max(0, int(reader.stats["capture"].get("frames", 0)) - n_file)
            for err in reader.errors:
                summary["errors"] += 1
                warn(str(err))
            if reader.errors:
                summary["damaged"].append(str(path))
            for w in reader.warnings:
                warn(f"{path}: {w}")
            if bar is not None:
                bar.update(end - bar.n)
    except BaseException:
        if cols is not None:
            cols.abort()
        raise
    finally:
        if bar is not None:
            bar.close()
        if jfh is not None and jfh is not sys.stdout:
            jfh.close()
    if cols is not None:
        from .. import __version__

        summary["flows"] = cols.n_flows
        meta = {"inputs": [os.path.abspath(p) for p in paths], "options": opts,
                "summary": summary, "tool": f"trafficsnn {__version__}"}
        cols.close(meta) if fmt == "npz" else cols.close()
    summary["seconds"] = time.perf_counter() - t0
    return summary


@click.command(name="extract")
@click.argument("captures", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("-o", "--out", required=True, metavar="PATH",
              help="Output file: .npz (columnar, for training), .jsonl/.json, .csv or .parquet; '-' = JSON "
                   "lines on stdout.")
@click.option("--format", "fmt", type=click.Choice(["npz", "jsonl", "csv", "parquet"]), default=None,
              help="Output format [default: from the file name; another extension is an error].")
@click.option("--zeek-names", is_flag=True,
              help="Tables (jsonl, csv, parquet) use Zeek conn.log names: ts, id.orig_h, id.orig_p, id.resp_h, "
                   "id.resp_p, proto (name), ip_proto, orig_pkts, resp_pkts, orig_ip_bytes, resp_ip_bytes.")
@click.option("--no-packets", is_flag=True,
              help="Leave the per-packet lists (t, size, dir, tcp_flags) out of a Parquet file (CSV never has them).")
@flow_table_options()
@click.option("--tcp-close/--no-tcp-close", default=True, show_default=True,
              help="End TCP flows at RST, or at the FIN handshake (its last ACK, within 2 s, stays in the flow).")
@click.option("--max-packets", type=click.IntRange(min=0), default=0, show_default=True,
              help="Keep at most this many packets per flow (counters still count all; 0 = all).")
@click.option("--whole-file", is_flag=True,
              help="nDPI-style flows: no timeouts, no TCP close (one flow per key per file).")
@click.option("--strict", is_flag=True, help="Stop at the first damaged file instead of warning.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar and no summary line.")
def command(captures, out, fmt, zeek_names, no_packets, idle_timeout, active_timeout, max_flows, tcp_close,
            max_packets, whole_file, strict, quiet):
    """Turn capture files (pcap or pcapng, any mix) into bidirectional flows.

    Each flow has its key (VLAN, protocol, client and server address and port), counters,
    why it ended, and per packet: time, IP size, direction (0 = client to server), wire
    length and TCP flags. The .npz output is what `trafficsnn train` reads fast; CSV, Parquet
    and JSON lines (one flow per row) are for people and other tools: addresses as text,
    protocol number and name, Community ID v1 (joins Zeek and Suricata logs).

    \b
    Examples:
      trafficsnn extract trace.pcap -o flows.npz
      trafficsnn extract *.pcapng --whole-file -o flows.jsonl
      trafficsnn extract trace.pcap --zeek-names -o flows.parquet
    """
    if "numpy" not in sys.modules:
        # a fresh CLI process: extraction never calls BLAS, so keep OpenBLAS from starting
        # (and spinning) a thread per core when numpy is first imported, here by the
        # next line's import; it was the CLI's largest start-up cost (~50 ms of CPU)
        for v in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ.setdefault(v, "1")
        _keep_freed_memory()
    import gc

    gc.disable()            # the imports below make many objects and no garbage: no collections there
    try:
        from ..flows.store import format_of
        from ..flows import FlowTable  # noqa: F401 - what extract_files imports: numpy, flows, packets
        from ..packets import read_packets  # noqa: F401
    finally:
        gc.enable()
    gc.freeze()             # and later collections never scan the modules' objects again

    try:
        fmt = format_of(out, fmt)
    except TrafficSNNError as err:
        raise ConfigError(str(err)) from None
    if fmt != "jsonl" and out == "-":
        raise ConfigError("--out - (stdout) needs --format jsonl")
    if fmt == "parquet":
        from ..flows.store import _need_pyarrow

        try:
            _need_pyarrow()
        except TrafficSNNError as err:
            raise ConfigError(str(err)) from None
    if out != "-" and Path(out).is_dir():
        raise ConfigError(f"-o {out} is a folder: give a file name such as {Path(out) / 'flows.npz'}")
    if out != "-" and Path(out).parent and not Path(out).parent.exists():
        raise ConfigError(f"output folder {Path(out).parent} does not exist")
    if out != "-":
        probe = Path(str(out) + ".tmp")
        try:
            with open(probe, "ab"):
                pass
            probe.unlink()
        except OSError as err:
            raise ConfigError(f"cannot write the output {out}: {err.strerror or err} "
                              "(choose a writable path with -o)") from None
    if whole_file:
        idle_timeout = active_timeout = 0
        tcp_close = False
    progress = not quiet and sys.stderr.isatty()
    s = extract_files(list(captures), out, fmt=fmt, idle_timeout=_timeout(idle_timeout),
                      active_timeout=_timeout(active_timeout), max_flows=max_flows or None,
                      tcp_close=tcp_close, max_packets=max_packets or None, strict=strict,
                      progress=progress, zeek_names=zeek_names, packets=not no_packets)
    if not s["packets"]:
        if out != "-":
            Path(out).unlink(missing_ok=True)
        what = f"; damaged: {', '.join(s['damaged'])}" if s["damaged"] else ""
        raise TrafficSNNError(f"no packet could be read from any of the {len(captures)} input(s){what}; "
                              f"nothing written (give pcap or pcapng files that hold packets)")
    if not quiet:
        rate = s["packets"] / s["seconds"] if s["seconds"] > 0 else 0.0
        click.echo(f"{s['files']} file(s): {s['packets']:,} packets -> {s['flows']:,} flows "
                   f"({s['skipped']:,} frames skipped, {s['errors']} damaged file(s), "
                   f"{s['evicted']:,} evicted) in {s['seconds']:.2f} s ({rate:,.0f} packets/s)"
                   + ("" if out == "-" else f"; wrote {out}")
                   + (f"; damaged: {', '.join(s['damaged'])}" if s["damaged"] else ""), err=True)
