"""``trafficsnn verdicts``: the classifier's verdict JSON lines -> a CSV or Parquet table."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from ..errors import ConfigError, TrafficSNNError

FORMATS = {".csv": "csv", ".parquet": "parquet"}


def read_verdicts(paths: list[str], warn=None) -> list[dict]:
    """Verdict dicts from JSON-lines files ('-' = stdin); lines that are not a verdict are counted and skipped."""
    out, bad = [], 0
    for p in paths:
        fh = sys.stdin if p == "-" else open(p, encoding="utf-8")
        try:
            for line in fh:
                if not line.strip():
                    continue
                try:
                    v = json.loads(line)
                except ValueError:
                    bad += 1
                    continue
                if isinstance(v, dict) and "class" in v and isinstance(v.get("flow"), dict):
                    out.append(v)
                else:
                    bad += 1
        finally:
            if fh is not sys.stdin:
                fh.close()
    if bad and warn:
        warn(f"{bad} line(s) that are not verdicts were skipped")
    return out


def write_table(verdicts: list[dict], out: str, *, fmt: str | None = None, zeek_names: bool = False,
                probabilities: bool = True) -> int:
    """Write ``verdicts`` to ``out`` (CSV or Parquet, from its extension or ``fmt``); returns the rows."""
    from ..api import verdict_table

    fmt = fmt or FORMATS.get(Path(out).suffix.lower())
    if fmt not in ("csv", "parquet"):
        raise ConfigError(f"cannot tell the format of {out}: give a name ending in .csv or .parquet (or --format)")
    tmp = Path(str(out) + ".tmp")
    try:
        if fmt == "csv":
            import csv

            cols = verdict_table(verdicts, zeek_names=zeek_names, probabilities=probabilities)

            with open(tmp, "w", encoding="utf-8", newline="") as fh:
                w = csv.writer(fh)
                w.writerow(list(cols))
                w.writerows(zip(*(["" if x is None else x for x in v] for v in cols.values())))
        else:
            from ..flows.store import _need_pyarrow

            _need_pyarrow()
            import pyarrow.parquet as pq

            from ..serve.parquet_sink import verdict_arrow_table

            pq.write_table(verdict_arrow_table(verdicts, zeek_names=zeek_names, probabilities=probabilities),
                           str(tmp), compression="zstd")
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return len(verdicts)


@click.command(name="verdicts")
@click.argument("inputs", nargs=-1, required=True)
@click.option("-o", "--out", required=True, metavar="PATH", help="Output table: .csv or .parquet.")
@click.option("--format", "fmt", type=click.Choice(["csv", "parquet"]), default=None,
              help="Output format [default: from the file name].")
@click.option("--zeek-names", is_flag=True, help="Zeek conn.log names (ts, id.orig_h, id.orig_p, proto...).")
@click.option("--no-probabilities", is_flag=True, help="Leave out the p_<class> columns.")
@click.option("-q", "--quiet", is_flag=True, help="No summary line.")
def command(inputs, out, fmt, zeek_names, no_probabilities, quiet):
    """Turn verdict JSON lines (classify --jsonl, replay --json) into a CSV or Parquet table.

    One row per verdict, in the flow table vocabulary of `trafficsnn extract` (community_id,
    client_ip, client_port, server_ip, server_port, proto, proto_name, ...), with the class,
    confidence, one p_<class> column per class, and the model id. Rotate the daemon's file
    with logrotate (copytruncate) and convert each rotated file.

    \b
    Examples:
      trafficsnn verdicts /var/log/trafficsnn/verdicts.jsonl.1 -o verdicts-1.parquet
      trafficsnn classify --bind ipc:///tmp/u --jsonl - | trafficsnn verdicts - -o v.csv
    """
    for p in inputs:
        if p != "-" and not os.path.isfile(p):
            raise ConfigError(f"{p}: no such verdict file")
    if fmt is None and Path(out).suffix.lower() not in FORMATS:
        raise ConfigError(f"cannot tell the format of {out}: give a name ending in .csv or .parquet (or --format)")
    warn = (lambda m: click.echo(f"warning: {m}", err=True))
    v = read_verdicts(list(inputs), warn=warn)
    try:
        n = write_table(v, out, fmt=fmt, zeek_names=zeek_names, probabilities=not no_probabilities)
    except OSError as err:
        raise TrafficSNNError(f"cannot write {out}: {err.strerror or err}") from None
    if not quiet:
        click.echo(f"{n:,} verdict(s) -> {out}", err=True)
