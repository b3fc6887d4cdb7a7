"""``trafficsnn classify``: the classifier daemon (thin wrapper over trafficsnn.serve.daemon)."""
from __future__ import annotations

import logging

import click

from ..serve.config import config_option


@click.command("classify")
@config_option("classify")
@click.option("--bind", multiple=True, metavar="ENDPOINT",
              help="ZeroMQ endpoint to receive flow updates on, e.g. ipc:///run/trafficsnn/updates or tcp://0.0.0.0:5555.")
@click.option("--connect", multiple=True, metavar="ENDPOINT", help="Connect to a capture agent that binds instead.")
@click.option("--model", type=click.Path(exists=False), default=None,
              help="Model directory (default: $TRAFFICSNN_MODEL, else the shipped models/ndpi6-snn).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda.")
@click.option("--jsonl", metavar="PATH", default=None, help="Append verdicts as JSON lines to PATH ('-' = stdout).")
@click.option("--parquet", metavar="DIR", default=None,
              help="Also write verdicts as rotated Parquet parts in DIR (verdicts-<UTC start>-<pid>-<n>.parquet, "
                   "the columns of `trafficsnn verdicts`; read the folder with pandas.read_parquet(DIR)).")
@click.option("--parquet-rotate-s", type=click.FloatRange(min=0, min_open=True), default=300.0, show_default=True,
              help="With --parquet: cut a part after this many seconds...")
@click.option("--parquet-max-rows", type=click.IntRange(min=1), default=100_000, show_default=True,
              help="...or this many verdicts, whichever comes first (and at shutdown).")
@click.option("--pub", multiple=True, metavar="ENDPOINT", help="Publish verdicts on a ZeroMQ PUB socket (topic = class).")
@click.option("--emit", type=click.Choice(["first", "update", "final"]), default="first", show_default=True,
              help="first: once, when confident enough or at flow end; update: after every update; final: at flow end.")
@click.option("--min-confidence", type=click.FloatRange(0, 1), default=0.8, show_default=True,
              help="With --emit first: the confidence that triggers the verdict before the flow ends.")
@click.option("--batch", type=click.IntRange(min=1), default=4096, show_default=True, help="Micro-batch: at most this many updates...")
@click.option("--batch-ms", type=float, default=5.0, show_default=True, help="...or this many milliseconds.")
@click.option("--max-flows", type=click.IntRange(min=1), default=250_000, show_default=True,
              help="Per-flow SNN states kept; the least recently updated are evicted beyond it (counted).")
@click.option("--rcvhwm", type=click.IntRange(min=1), default=100, show_default=True,
              help="Messages queued per connected sensor before ZeroMQ stops reading from it.")
@click.option("--max-message-mb", type=click.FloatRange(min=0, max=4096, min_open=True), default=2.0, show_default=True,
              help="Largest message frame accepted (ZMQ_MAXMSGSIZE: a peer sending more is disconnected); "
                   "larger whole messages are dropped and counted. Queued memory per sensor <= rcvhwm x 3 x this.")
@click.option("--max-update-packets", type=click.IntRange(min=1), default=65_536, show_default=True,
              help="Packets in one flow update; a message holding a larger update is dropped and counted.")
@click.option("--batch-packets", type=click.IntRange(min=1), default=262_144, show_default=True,
              help="Packets per micro-batch (bounds inference memory); a larger message is dropped and counted.")
@click.option("--drain-timeout", type=click.FloatRange(0, 3600), default=10.0, show_default=True,
              help="On SIGTERM: seconds to keep classifying what is queued before the open flows' verdicts are "
                   "flushed and the daemon exits 0 (keep it well below the unit's TimeoutStopSec).")
@click.option("--max-sensors", type=click.IntRange(min=1), default=256, show_default=True,
              help="Sensors whose counters are kept and exported; beyond it the longest silent one is dropped (counted).")
@click.option("--metrics-port", type=click.IntRange(1, 65535), default=None, help="Serve Prometheus metrics on this port.")
@click.option("--metrics-addr", default="127.0.0.1", show_default=True, help="Address for the metrics endpoint.")
@click.option("--curve-secret", type=click.Path(dir_okay=False), help="Server CURVE NAME.key_secret file.")
@click.option("--curve-clients", type=click.Path(file_okay=False),
              help="Directory of authorized client public .key files (only these may connect).")
@click.option("--exit-after-eos", type=int, default=0, show_default=True,
              help="Exit once this many sensors have ended their stream (file replay); 0 = run until SIGTERM.")
@click.option("--threads", type=int, default=None, help="Torch CPU threads (default: torch's choice).")
@click.option("-q", "--quiet", is_flag=True, help="Do not print the counters at exit.")
@click.option("-v", "--verbose", is_flag=True, help="Log more.")
def command(bind, connect, model, device, jsonl, parquet, parquet_rotate_s, parquet_max_rows, pub, emit,
            min_confidence, batch, batch_ms, max_flows, rcvhwm,
            max_message_mb, max_update_packets, batch_packets, drain_timeout, max_sensors, metrics_port,
            metrics_addr, curve_secret, curve_clients, exit_after_eos, threads, quiet, verbose) -> None:
    """Classify flow updates arriving over ZeroMQ with a stateful spiking neural network.

    \b
      trafficsnn classify --bind ipc:///run/trafficsnn/updates --jsonl verdicts.jsonl --metrics-port 9102
      trafficsnn classify --bind ipc:///run/trafficsnn/updates --parquet /var/lib/trafficsnn/verdicts

    Each flow keeps its network state between updates, so a verdict exists
    after a few packets and is refined as more arrive. SIGHUP reloads the model
    (a bad file is refused and the old one keeps serving); SIGTERM classifies
    what is queued, flushes the verdicts and exits 0.
    """
    from ..serve.daemon import ClassifyConfig, run_daemon

    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="trafficsnn classify: %(levelname)s %(message)s")
    cfg = ClassifyConfig(bind=tuple(bind), connect=tuple(connect), model=model, device=device, jsonl=jsonl,
                         parquet=parquet, parquet_rotate_s=parquet_rotate_s, parquet_max_rows=parquet_max_rows,
                         pub=tuple(pub), emit=emit, min_confidence=min_confidence, batch=batch, batch_ms=batch_ms,
                         max_flows=max_flows, rcvhwm=rcvhwm, max_message_mb=max_message_mb,
                         max_update_packets=max_update_packets, batch_packets=batch_packets,
                         drain_timeout=drain_timeout, max_sensors=max_sensors, metrics_port=metrics_port,
                         metrics_addr=metrics_addr,
                         curve_secret=curve_secret, curve_clients=curve_clients, exit_after_eos=exit_after_eos,
                         threads=threads)
    run_daemon(cfg, quiet=quiet)
