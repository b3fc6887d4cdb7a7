"""``trafficsnn capture``: the capture agent (thin wrapper over trafficsnn.serve.agent). Never imports torch."""
from __future__ import annotations

import logging

import click

from ..serve.config import config_option
from ._options import flow_table_options


@click.command("capture")
@config_option("capture")
@click.option("-i", "--interface", "interface", metavar="IFACE", help="Capture live from this interface.")
@click.option("--pcap", "pcap", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="Read packets from a pcap/pcapng file instead (repeatable).")
@click.option("--speed", type=float, default=None,
              help="With --pcap: replay at this multiple of the recorded speed (1.0 = real time). "
                   "Default: as fast as possible.")
@click.option("--pps", type=float, default=None,
              help="With --pcap: replay at this fixed packet rate instead (like tcpreplay --pps).")
@click.option("-f", "--filter", "bpf_filter", metavar="BPF", help="BPF filter, tcpdump syntax (in the kernel when live).")
@click.option("--snaplen", type=click.IntRange(64, 262144), default=256, show_default=True,
              help="Bytes kept per frame; headers only, payload is never read.")
@click.option("--promisc/--no-promisc", default=False, show_default=True,
              help="Promiscuous mode (needs CAP_NET_ADMIN as well as CAP_NET_RAW).")
@click.option("--ring/--no-ring", default=True, show_default=True,
              help="Live: read through a TPACKET_V3 ring (whole blocks, as libpcap does); --no-ring (or a "
                   "kernel without the ring) uses a raw socket, one recvmsg per packet. The path taken is logged.")
@click.option("--ring-size", "ring_mb", type=float, default=64.0, show_default=True, metavar="MiB",
              help="Live: ring memory per capture process; it absorbs bursts while the process is busy.")
@click.option("--ring-block", "block_kb", type=int, default=1024, show_default=True, metavar="KiB",
              help="Live: ring block size (a multiple of the page size).")
@click.option("--block-timeout", "block_timeout_ms", type=int, default=10, show_default=True, metavar="MS",
              help="Live: hand a partly filled block over after this long (bounds the added latency).")
@click.option("--batch-wait", "batch_wait_ms", type=click.IntRange(0, 1000), default=20, show_default=True,
              metavar="MS",
              help="Live (ring): after a block arrives, wait up to this long for more blocks until a batch holds "
                   "4096 frames; the per-batch cost is then shared by more packets (less CPU per packet at "
                   "moderate rates, at most this much added latency). 0 = hand each block on at once.")
@click.option("--workers", type=int, default=1, show_default=True,
              help="Live: capture processes in one PACKET_FANOUT hash group; the kernel sends both directions "
                   "of a flow to the same one, each keeps its own flow table and sends as SENSOR/wI.")
@click.option("--fanout-group", type=int, default=None, metavar="ID",
              help="Live: PACKET_FANOUT group id, 0..65535 (default with --workers > 1: from the process id). "
                   "Separate agents given one id share the traffic the same way.")
@click.option("--connect", multiple=True, metavar="ENDPOINT",
              help="ZeroMQ endpoint of the classifier to send updates to, e.g. ipc:///run/trafficsnn/updates. "
                   "Repeat for classifier shards: each flow always goes to the same one.")
@click.option("--bind", multiple=True, metavar="ENDPOINT", help="Bind a ZeroMQ PUSH endpoint instead (classifiers connect).")
@click.option("--sensor", default=None, help="Sensor id carried in every message (default: host name).")
@click.option("--every", type=int, default=8, show_default=True, help="Send a flow update every K packets of a flow.")
@click.option("--window", type=float, default=1.0, show_default=True,
              help="...and at least once per window of this many seconds of a flow (0 = off).")
@flow_table_options()
@click.option("--hwm", type=int, default=1000, show_default=True,
              help="Messages queued for the classifier before updates are dropped (sending never blocks).")
@click.option("--lossless", is_flag=True,
              help="With --pcap: wait for the classifier instead of dropping (file replay).")
@click.option("--connect-timeout", type=click.FloatRange(0, 86400, min_open=True), default=30.0, show_default=True,
              metavar="SECONDS",
              help="With --pcap: wait this long for the handshake (CURVE included) with every classifier before "
                   "reading the files, and with --lossless for room to send; then exit 1 with an error.")
@click.option("--metrics-port", type=click.IntRange(1, 65535), default=None, help="Serve Prometheus metrics on this port.")
@click.option("--metrics-addr", default="127.0.0.1", show_default=True, help="Address for the metrics endpoint.")
@click.option("--curve-secret", type=click.Path(dir_okay=False), help="This sensor's CURVE NAME.key_secret file.")
@click.option("--curve-server", type=click.Path(dir_okay=False), help="The classifier's public CURVE .key file.")
@click.option("-q", "--quiet", is_flag=True, help="Do not print the counters at exit.")
@click.option("-v", "--verbose", is_flag=True, help="Log more.")
def command(interface, pcap, speed, pps, bpf_filter, snaplen, promisc, ring, ring_mb, block_kb, block_timeout_ms,
            batch_wait_ms,
            workers, fanout_group, connect, bind, sensor, every, window,
            idle_timeout, active_timeout, max_flows, hwm, lossless, connect_timeout, metrics_port, metrics_addr,
            curve_secret, curve_server, quiet, verbose) -> None:
    """Capture packets, track flows and stream flow updates to a classifier over ZeroMQ.

    \b
    Live (needs CAP_NET_RAW only):
      trafficsnn capture -i eth0 -f "tcp or udp" --connect ipc:///run/trafficsnn/updates
    Live on two cores, flows split by a kernel hash (PACKET_FANOUT):
      trafficsnn capture -i eth0 --workers 2 --ring-size 128 --connect ipc:///run/trafficsnn/updates
    From a file, as fast as possible or at recorded speed:
      trafficsnn capture --pcap trace.pcap --speed 1.0 --connect tcp://classifier:5555

    Sending never blocks on a slow or absent classifier: updates that do not
    fit under --hwm are dropped and counted. SIGUSR1 logs the counters;
    SIGTERM ends all flows, sends their final updates and exits 0.
    """
    from ..serve.agent import AgentConfig, run_agent

    # the source given on the command line wins over the other kind of source from --config
    ctx = click.get_current_context()
    from_config = {n: ctx.get_parameter_source(n) == click.core.ParameterSource.DEFAULT_MAP
                   for n in ("interface", "pcap")}
    if interface and pcap:
        if from_config["interface"] and not from_config["pcap"]:
            interface = None
        elif from_config["pcap"] and not from_config["interface"]:
            pcap = ()

    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="trafficsnn capture: %(levelname)s %(message)s")
    logging.getLogger("trafficsnn.serve.agent").setLevel(logging.INFO)  # which live path runs, always
    cfg = AgentConfig(iface=interface, pcap=tuple(pcap), speed=speed or None, pps=pps, bpf_filter=bpf_filter,
                      snaplen=snaplen, promisc=promisc, connect=tuple(connect), bind=tuple(bind),
                      every=every, window=window or None, idle_timeout=idle_timeout or None,
                      active_timeout=active_timeout or None, max_flows=max_flows or None, hwm=hwm, lossless=lossless,
                      connect_timeout=connect_timeout,
                      metrics_port=metrics_port, metrics_addr=metrics_addr, curve_secret=curve_secret,
                      curve_server=curve_server, ring=ring, ring_mb=ring_mb, block_kb=block_kb,
                      block_timeout_ms=block_timeout_ms, batch_wait_ms=batch_wait_ms, workers=workers,
                      fanout_group=fanout_group)
    if sensor:
        cfg.sensor = sensor
    run_agent(cfg, quiet=quiet)
