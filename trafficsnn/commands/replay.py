"""``trafficsnn replay``: classify the flows of capture files (thin wrapper over trafficsnn.serve.replay)."""
from __future__ import annotations

import json

import click


@click.command("replay")
@click.argument("captures", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--model", type=click.Path(), default=None,
              help="Model directory (default: $TRAFFICSNN_MODEL, else the shipped models/ndpi6-snn).")
@click.option("--inproc", is_flag=True, help="Run agent and classifier in one process (inproc:// socket).")
@click.option("--json", "as_json", is_flag=True, help="Print each verdict as a JSON line (no table).")
@click.option("--every", type=int, default=8, show_default=True, help="Flow update every K packets.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda.")
@click.option("-q", "--quiet", is_flag=True, help="Only the summary table.")
def command(captures, model, inproc, as_json, every, device, quiet) -> None:
    """Classify every flow of CAPTURES with the streaming pipeline and print one verdict per flow.

    \b
    Runs the capture agent and the classifier daemon as two processes joined by
    a ZeroMQ ipc:// socket (or one process with --inproc), exactly as they run
    in production, then prints each flow's final verdict and a table per class.
      trafficsnn replay trace.pcap
      trafficsnn replay a.pcap b.pcapng --model run/ --json > verdicts.jsonl
    """
    from ..serve.replay import replay, summary_rows, verdict_line

    from ..errors import TrafficSNNError

    res = replay(list(captures), model=model, inproc=inproc, every=every, device=device)
    damaged = f"; damaged: {', '.join(res.damaged)}" if res.damaged else ""
    if not res.capture.get("packets"):
        raise TrafficSNNError(f"no packet could be read from any of the {len(captures)} input(s){damaged} "
                              "(give pcap or pcapng files that hold IP packets)")
    vs = sorted(res.verdicts, key=lambda v: (v["first_ts"], v["flow_id"]))
    if as_json:
        for v in vs:
            click.echo(json.dumps(v, separators=(",", ":")))
        return
    if not quiet:
        for v in vs:
            click.echo(verdict_line(v))
        click.echo("")
    rows = summary_rows(vs)
    width = max([len("class")] + [len(r[0]) for r in rows])
    click.echo(f"{'class':<{width}}  {'flows':>7}  {'packets':>9}  {'mean conf':>9}")
    for c, f, p, conf in rows:
        click.echo(f"{c:<{width}}  {f:>7}  {p:>9}  {conf:>9.3f}")
    cap = res.capture
    click.echo(f"{'total':<{width}}  {len(vs):>7}  {sum(r[2] for r in rows):>9}")
    click.echo(f"\n{cap.get('packets', 0)} packets in {cap.get('flows_created', 0)} flows, "
               f"{cap.get('packets_dropped', 0)} dropped, {len(vs)} verdicts, {res.seconds:.2f} s{damaged}", err=True)
