"""CURVE and --pcap: the agent waits for the handshake before replaying, and a refused or absent
classifier ends the run with one LinkError after a bounded time, never a silent loss or hang."""
from __future__ import annotations

import shutil
import time

import pytest
import zmq

from trafficsnn import wire
from trafficsnn.errors import LinkError
from trafficsnn.serve.agent import AgentConfig, CaptureAgent
from trafficsnn.serve.demo import write_demo_pcap
from trafficsnn.serve.security import make_keys, secure_server, stop_auth

pytestmark = pytest.mark.skipif(not zmq.has("curve"), reason="libzmq without CURVE")


@pytest.fixture
def keys(tmp_path):
    d = tmp_path / "keys"
    for name in ("server", "sensor1", "evil"):
        make_keys(d, name)
    auth = tmp_path / "authorized"
    auth.mkdir()
    shutil.copy(d / "sensor1.key", auth)
    return d, auth


@pytest.fixture
def pcap(tmp_path):
    p = tmp_path / "d.pcap"
    write_demo_pcap(p, n_flows=30, packets_per_flow=10, duration=5.0, seed=3)
    return p


def _server(ctx, keys, curve=True):
    d, auth_dir = keys
    pull = ctx.socket(zmq.PULL)
    pull.linger = 0
    auth = secure_server(ctx, pull, d / "server.key_secret", auth_dir) if curve else None
    port = pull.bind_to_random_port("tcp://127.0.0.1")
    return pull, auth, f"tcp://127.0.0.1:{port}"


def _agent(pcap, ep, keys, who="sensor1", **kw):
    d, _ = keys
    curve = {} if who is None else {"curve_secret": str(d / f"{who}.key_secret"), "curve_server": str(d / "server.key")}
    return AgentConfig(pcap=(str(pcap),), connect=(ep,), sensor="s", stats_interval=0, **curve, **kw)


def _updates_received(pull, ctx) -> int:
    n = 0
    ws = wire.WireStats()
    while pull.poll(1000):
        msg = ws.decode(pull.recv_multipart(copy=False))
        if isinstance(msg, wire.UpdateBatch):
            n += len(msg)
    return n


def _free_port() -> int:
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_curve_pcap_replay_without_lossless_loses_no_update(pcap, keys):
    """The classifier comes up 0.5 s after the agent: before, every update sent until the CURVE
    handshake completed was dropped; now the agent waits for it and none is lost."""
    import threading

    ctx = zmq.Context()
    d, auth_dir = keys
    ep = f"tcp://127.0.0.1:{_free_port()}"
    pull = ctx.socket(zmq.PULL)
    pull.linger = 0
    auth = secure_server(ctx, pull, d / "server.key_secret", auth_dir)
    late = threading.Timer(0.5, lambda: pull.bind(ep))
    late.start()
    try:
        snap = CaptureAgent(_agent(pcap, ep, keys, connect_timeout=20), ctx=ctx).run()
        c = snap["counters"]
        assert c["updates"] > 30 and c["updates_dropped"] == 0 and c["updates_sent"] == c["updates"]
        assert _updates_received(pull, ctx) == c["updates"]
    finally:
        late.join()
        pull.close(0)
        stop_auth(auth)
        ctx.term()


@pytest.mark.parametrize("lossless", [False, True])
def test_refused_curve_key_is_one_error_at_once(pcap, keys, lossless):
    ctx = zmq.Context()
    pull, auth, ep = _server(ctx, keys)
    try:
        t0 = time.monotonic()
        with pytest.raises(LinkError, match="refused this sensor's CURVE key.*--curve-clients"):
            CaptureAgent(_agent(pcap, ep, keys, who="evil", lossless=lossless, connect_timeout=20), ctx=ctx).run()
        assert time.monotonic() - t0 < 10  # the refusal, not the timeout
    finally:
        pull.close(0)
        stop_auth(auth)
        ctx.term()


def test_plaintext_sensor_to_curve_classifier_is_one_error(pcap, keys):
    ctx = zmq.Context()
    pull, auth, ep = _server(ctx, keys)
    try:
        with pytest.raises(LinkError, match="expects CURVE"):
            CaptureAgent(_agent(pcap, ep, keys, who=None, lossless=True, connect_timeout=20), ctx=ctx).run()
    finally:
        pull.close(0)
        stop_auth(auth)
        ctx.term()


def test_unreachable_classifier_with_lossless_times_out(pcap, keys, tmp_path):
    t0 = time.monotonic()
    with pytest.raises(LinkError, match=r"no handshake .* within 1 s \(--connect-timeout\)"):
        CaptureAgent(_agent(pcap, f"ipc://{tmp_path}/nobody", keys, lossless=True, connect_timeout=1)).run()
    assert time.monotonic() - t0 < 6


def test_cli_refused_key_exits_1_with_one_line(pcap, keys, capsys):
    from trafficsnn.cli import main

    ctx = zmq.Context()
    pull, auth, ep = _server(ctx, keys)
    d, _ = keys
    try:
        with pytest.raises(SystemExit) as ei:
            main(["capture", "--pcap", str(pcap), "--connect", ep, "--lossless", "-q", "--connect-timeout", "10",
                  "--curve-secret", str(d / "evil.key_secret"), "--curve-server", str(d / "server.key")])
        assert ei.value.code == 1
        err = capsys.readouterr().err
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert lines[-1].startswith("error: ") and "refused" in lines[-1] and "Traceback" not in err
    finally:
        pull.close(0)
        stop_auth(auth)
        ctx.term()


def test_classifier_logs_and_counts_rejected_handshakes(pcap, keys, tmp_path, caplog):
    import logging
    import threading

    from prometheus_client import generate_latest

    from trafficsnn.serve.daemon import ClassifierDaemon, ClassifyConfig
    from trafficsnn.serve.demo import make_random_model
    from trafficsnn.serve.sinks import ListSink

    d, auth_dir = keys
    ep = f"tcp://127.0.0.1:{_free_port()}"
    ctx = zmq.Context()
    daemon = ClassifierDaemon(ClassifyConfig(bind=(ep,), model=str(make_random_model(tmp_path / "m")), device="cpu",
                                             curve_secret=str(d / "server.key_secret"), curve_clients=str(auth_dir),
                                             metrics_port=_free_port()), ctx=ctx, sinks=[ListSink()])
    th = threading.Thread(target=daemon.run, daemon=True)
    caplog.set_level(logging.WARNING)
    th.start()
    try:
        with pytest.raises(LinkError, match="refused"):
            CaptureAgent(_agent(pcap, ep, keys, who="evil", connect_timeout=10), ctx=ctx).run()
        with pytest.raises(LinkError, match="expects CURVE"):
            CaptureAgent(_agent(pcap, ep, keys, who=None, connect_timeout=10), ctx=ctx).run()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and len(daemon.handshakes_rejected) < 2:
            time.sleep(0.05)
        assert daemon.handshakes_rejected["key_refused"] >= 1 and daemon.handshakes_rejected["protocol"] >= 1
        text = generate_latest(daemon.metrics.registry).decode()
        assert 'trafficsnn_handshakes_rejected_total{reason="key_refused"}' in text
        evil_pub = (d / "evil.key").read_text().split('public-key = "')[1].split('"')[0]
        assert any("refused CURVE client key" in r.getMessage() and evil_pub in r.getMessage() for r in caplog.records)
    finally:
        daemon.stop()
        th.join(timeout=20)
        ctx.term()
