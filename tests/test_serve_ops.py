"""Operations: Prometheus metrics over HTTP, --config TOML defaults, CURVE between agent and daemon."""
from __future__ import annotations

import shutil
import threading
import urllib.request

import click
import pytest
import zmq

from trafficsnn.errors import ConfigError
from trafficsnn.serve.agent import AgentConfig, CaptureAgent
from trafficsnn.serve.config import load_section
from trafficsnn.serve.daemon import ClassifierDaemon, ClassifyConfig
from trafficsnn.serve.demo import make_random_model, write_demo_pcap
from trafficsnn.serve.security import make_keys
from trafficsnn.serve.sinks import ListSink


def _free_port() -> int:
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def _run_pair(tmp_path, daemon_kw: dict, agent_kw: dict, n_flows: int = 12):
    """A daemon thread and an agent over TCP: the agent replays a demo pcap, the daemon exits after its EOS."""
    pcap = tmp_path / "d.pcap"
    write_demo_pcap(pcap, n_flows=n_flows, packets_per_flow=10, duration=5.0, seed=7)
    model = make_random_model(tmp_path / "m")
    ctx = zmq.Context()
    sink = ListSink()
    port = _free_port()
    ep = f"tcp://127.0.0.1:{port}"
    d = ClassifierDaemon(ClassifyConfig(bind=(ep,), model=str(model), device="cpu", emit="final",
                                        exit_after_eos=1, **daemon_kw), ctx=ctx, sinks=[sink])
    out: dict = {}
    th = threading.Thread(target=lambda: out.update(d.run()), daemon=True)
    th.start()
    acfg = AgentConfig(pcap=(str(pcap),), connect=(ep,), lossless=True, sensor="s", stats_interval=0, **agent_kw)
    try:
        CaptureAgent(acfg, ctx=ctx).run()
        th.join(timeout=60)
    finally:
        d.stop()
        th.join(timeout=10)
    return d, out, sink, ctx


def test_metrics_endpoint_exports_counters_histograms_and_model(tmp_path):
    mport = _free_port()
    d, out, sink, ctx = _run_pair(tmp_path, {"metrics_port": mport}, {})
    # the HTTP server is closed with the daemon: check the registry the endpoint served
    text = _metrics_text(d)
    assert "trafficsnn_packets_total 120.0" in text
    assert "trafficsnn_flows_total 12.0" in text
    assert 'trafficsnn_model_info{id="random-0"' in text
    assert "trafficsnn_inference_seconds_bucket" in text and "trafficsnn_batch_updates_count" in text
    assert 'trafficsnn_drops_total{cause="state_evicted"} 0.0' in text
    assert len(sink.verdicts) == 12
    ctx.term()


def _metrics_text(d) -> str:
    from prometheus_client import generate_latest

    return generate_latest(d.metrics.registry).decode()


def test_metrics_over_http(tmp_path):
    from trafficsnn.serve.metrics import Metrics

    port = _free_port()
    m = Metrics(lambda: {"counters": {"updates_total": 5, "drops_total": {"gap": 2, "_label": "cause"}},
                         "gauges": {"flows_active": 3}, "info": {"model": {"id": "x", "sha256": "ab"}}})
    m.serve(port)
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    finally:
        m.close()
    assert "trafficsnn_updates_total 5.0" in text and 'trafficsnn_drops_total{cause="gap"} 2.0' in text
    assert "trafficsnn_flows_active 3.0" in text and 'trafficsnn_model_info{id="x",sha256="ab"} 1.0' in text


def test_curve_agent_to_daemon(tmp_path):
    keys = tmp_path / "keys"
    for name in ("server", "sensor1"):
        make_keys(keys, name)
    auth = tmp_path / "authorized"
    auth.mkdir()
    shutil.copy(keys / "sensor1.key", auth)
    d, out, sink, ctx = _run_pair(
        tmp_path, {"curve_secret": str(keys / "server.key_secret"), "curve_clients": str(auth)},
        {"curve_secret": str(keys / "sensor1.key_secret"), "curve_server": str(keys / "server.key")})
    assert len(sink.verdicts) == 12 and out["counters"]["packets"] == 120
    ctx.term()


def test_config_file_sets_defaults_and_rejects_unknown_keys(tmp_path):
    from trafficsnn.commands.capture import command as capture_cmd

    cfg = tmp_path / "t.toml"
    cfg.write_text('[capture]\ninterface = "lo"\nfilter = "udp"\nevery = 3\nconnect = "ipc:///x"\n'
                   '[classify]\nbind = "ipc:///x"\n')
    ctx = capture_cmd.make_context("capture", ["--config", str(cfg), "--every", "5"])
    assert ctx.params["interface"] == "lo" and ctx.params["bpf_filter"] == "udp"
    assert ctx.params["every"] == 5  # the command line wins
    assert list(ctx.params["connect"]) == ["ipc:///x"]
    bad = tmp_path / "bad.toml"
    bad.write_text("[capture]\nnonsense = 1\n")
    with pytest.raises(click.BadParameter, match="unknown key 'nonsense'"):
        capture_cmd.make_context("capture", ["--config", str(bad)])
    with pytest.raises(ConfigError, match="not valid TOML"):
        (tmp_path / "x.toml").write_text("[capture\n")
        load_section(tmp_path / "x.toml", "capture", {"a"})


def test_pcap_on_the_command_line_wins_over_the_configs_interface(tmp_path, monkeypatch):
    """systemd's TOML names an interface; `capture --config it --pcap f` replays f (the command line wins)."""
    from trafficsnn.serve import agent

    pcap = tmp_path / "d.pcap"
    write_demo_pcap(pcap, n_flows=2, packets_per_flow=4)
    cfg = tmp_path / "t.toml"
    cfg.write_text('[capture]\ninterface = "eth9"\nconnect = "ipc:///x"\n')
    seen = {}
    monkeypatch.setattr(agent, "run_agent", lambda c, quiet=False: seen.update(iface=c.iface, pcap=c.pcap))
    from trafficsnn.cli import main

    main(["capture", "--config", str(cfg), "--pcap", str(pcap), "-q"])
    assert seen == {"iface": None, "pcap": (str(pcap),)}
    main(["capture", "--config", str(cfg), "-q"])
    assert seen == {"iface": "eth9", "pcap": ()}


def test_example_config_loads_into_both_commands():
    from pathlib import Path

    from trafficsnn.commands.capture import command as capture_cmd
    from trafficsnn.commands.classify import command as classify_cmd

    example = Path(__file__).resolve().parent.parent / "systemd" / "trafficsnn.toml"
    c = capture_cmd.make_context("capture", ["--config", str(example)])
    assert c.params["interface"] == "eth0" and c.params["snaplen"] == 256
    k = classify_cmd.make_context("classify", ["--config", str(example)])
    assert k.params["emit"] == "first" and list(k.params["bind"]) == ["ipc:///run/trafficsnn/updates"]


def test_verdict_json_fast_path_matches_to_dict():
    import json

    from trafficsnn.flows.records import FlowKey
    from trafficsnn.packets.batch import ip_to_words
    from trafficsnn.serve.sinks import Verdict

    for lat, fin, ip in ((0.0123456, True, "10.1.2.3"), (None, False, "2001:db8::1")):
        hi, lo = ip_to_words(ip)
        v = Verdict(key=FlowKey(3, 17, hi, lo, 5353, *ip_to_words("8.8.8.8"), 53), flow_id=9, sensor='s "1"',
                    label="VoIP", confidence=0.91234567, probabilities={"VoIP": 0.91234567, "Chat": 1e-9},
                    packets=12, first_ts=1700000000.123456, verdict_ts=1700000001.5, model_id="m",
                    model_sha256="ab" * 32, final=fin, reason="idle" if fin else "", steps=4, latency_s=lat)
        assert json.loads(v.to_json()) == v.to_dict()
        assert v.to_dict()["flow"]["client"] == ip
    # class names are escaped (a "%" in one must not break the probabilities' format), NaN is null
    for probs in ({'100% "x"': 0.5, "b": 0.25}, {'100% "x"': float("nan"), "b": float("inf")}):
        v = Verdict(key=FlowKey(0, 6, *ip_to_words("10.0.0.1"), 1, *ip_to_words("10.0.0.2"), 2), flow_id=1,
                    sensor="s", label="b", confidence=0.25, probabilities=probs, packets=1, first_ts=1.0,
                    verdict_ts=2.0, model_id="m", model_sha256="00")
        assert json.loads(v.to_json()) == v.to_dict()


def test_bpf_filter_on_capture_files(tmp_path):
    pytest.importorskip("scapy")
    from trafficsnn.packets import open_capture
    from trafficsnn.serve.bpf import compile_matcher

    try:
        match = compile_matcher("tcp and dst port 443")
    except ConfigError as err:
        pytest.skip(f"libpcap unavailable: {err}")
    pcap = tmp_path / "f.pcap"
    write_demo_pcap(pcap, n_flows=10, packets_per_flow=10, duration=2.0, seed=3, tcp_fraction=0.5)
    kept = total = 0
    for fb in open_capture(pcap):
        total += len(fb)
        out = match(fb)
        kept += len(out)
        for i in range(len(out)):
            frame = out.data[out.offset[i]:out.offset[i] + out.caplen[i]]
            assert frame[23] == 6 and int(frame[36]) << 8 | int(frame[37]) == 443
    assert 0 < kept < total
    with pytest.raises(ConfigError):
        compile_matcher("tcp and and port")


def test_agent_prometheus_names(tmp_path):
    from prometheus_client import generate_latest

    from trafficsnn.serve.metrics import Metrics

    pcap = tmp_path / "a.pcap"
    write_demo_pcap(pcap, n_flows=3, packets_per_flow=5, duration=1.0, seed=1)
    ctx = zmq.Context()
    a = CaptureAgent(AgentConfig(pcap=(str(pcap),), connect=("inproc://nobody",), stats_interval=0), ctx=ctx)
    a.run()
    text = generate_latest(Metrics(a.prometheus_snapshot).registry).decode()
    ctx.term()
    assert "trafficsnn_capture_packets_total 15.0" in text
    assert "trafficsnn_capture_updates_dropped_total" in text  # nobody listening: counted, not blocked
    assert 'trafficsnn_capture_decode_total{outcome="non_ip"} 0.0' in text


def test_fixed_packet_rate_replay(tmp_path):
    import time

    pcap = tmp_path / "r.pcap"
    n = write_demo_pcap(pcap, n_flows=20, packets_per_flow=20, duration=1.0, seed=2)
    ctx = zmq.Context()
    t = time.monotonic()
    snap = CaptureAgent(AgentConfig(pcap=(str(pcap),), connect=("inproc://none",), pps=2000, stats_interval=0),
                        ctx=ctx).run()
    took = time.monotonic() - t
    ctx.term()
    assert snap["counters"]["packets"] == n == 400
    assert 0.18 <= took < 5  # 400 packets at 2000/s
    with pytest.raises(ConfigError):
        AgentConfig(pcap=("x",), connect=("inproc://a",), pps=10, speed=1.0).validate()


def test_shards_each_flow_goes_to_one_classifier(tmp_path):
    from trafficsnn import wire

    pcap = tmp_path / "s.pcap"
    n = write_demo_pcap(pcap, n_flows=30, packets_per_flow=12, duration=3.0, seed=4)
    ctx = zmq.Context()
    pulls = [ctx.socket(zmq.PULL) for _ in range(3)]
    eps = [f"inproc://shard{i}" for i in range(3)]
    for p, ep in zip(pulls, eps):
        p.bind(ep)
    snap = CaptureAgent(AgentConfig(pcap=(str(pcap),), connect=tuple(eps), lossless=True, every=4,
                                    stats_interval=0, sensor="s"), ctx=ctx).run()
    owner: dict[int, int] = {}
    packets = eos = 0
    for i, p in enumerate(pulls):
        while p.poll(200):
            msg = wire.decode(p.recv_multipart())
            if isinstance(msg, wire.UpdateBatch):
                packets += msg.n_packets
                for fid in msg.keys["flow_id"].tolist():
                    assert owner.setdefault(fid, i) == i  # never split across shards
            elif msg.eos:
                eos += 1
        p.close(0)
    ctx.term()
    assert packets == n == snap["counters"]["packets_sent"] and eos == 3
    assert len(set(owner.values())) == 3
