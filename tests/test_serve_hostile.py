"""The daemon under hostile or broken input: bad model files, huge messages, STATS abuse, shutdown under load."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import zmq

from trafficsnn import wire
from trafficsnn.errors import ModelError
from trafficsnn.flows.records import FlowKey, FlowUpdate
from trafficsnn.serve.daemon import ClassifierDaemon, ClassifyConfig
from trafficsnn.serve.demo import make_random_model
from trafficsnn.serve.sinks import ListSink
from trafficsnn.snn.checkpoint import load_checkpoint
from trafficsnn.snn.spec_check import validate_spec


@pytest.fixture(scope="module")
def model_src(tmp_path_factory) -> Path:
    return make_random_model(tmp_path_factory.mktemp("m") / "model", seed=4)


@pytest.fixture
def model(tmp_path, model_src) -> Path:
    d = tmp_path / "model"
    shutil.copytree(model_src, d)
    return d


def _spec(d: Path) -> dict:
    return json.loads((d / "model.json").read_text())


def _write(d: Path, spec: dict | str) -> None:
    (d / "model.json").write_text(spec if isinstance(spec, str) else json.dumps(spec))


def _daemon(tmp_path, model: Path, **kw) -> tuple[ClassifierDaemon, ListSink]:
    sink = ListSink()
    cfg = ClassifyConfig(bind=(f"ipc://{tmp_path}/u",), model=str(model), device="cpu", **kw)
    return ClassifierDaemon(cfg, ctx=zmq.Context(), sinks=[sink]), sink


def _flow(fid: int, n: int = 40, seq: int = 0, final: bool = True, span: float = 4.0, t0: float = 1000.0,
          sensor_ts0: float | None = None) -> FlowUpdate:
    ts = t0 + np.linspace(0, span, n)
    key = FlowKey(0, 6, 0, 100 + fid, 1000 + fid, 0, 7, 443)
    return FlowUpdate(flow_id=fid, key=key, start_ts=t0 if sensor_ts0 is None else sensor_ts0, seq=seq, ts=ts,
                      size=np.full(n, 100 + fid % 1000, np.uint32), direction=(np.arange(n) % 2).astype(np.uint8),
                      final=final, reason="fin" if final else "")


# ------------------------------------------------------------------ 1. model.json validation, reload

BAD_SPECS = {
    "temperature a list": lambda s: s.update(temperature=[1, 2]),
    "temperature NaN": lambda s: s.update(temperature=float("nan")),
    "temperature 0": lambda s: s.update(temperature=0),
    "temperature inf": lambda s: s.update(temperature=float("inf")),
    "tensor info not a dict": lambda s: s["weights"]["tensors"].update({next(iter(s["weights"]["tensors"])): 3}),
    "shape not ints": lambda s: next(iter(s["weights"]["tensors"].values())).update(shape=["a"]),
    "classes not strings": lambda s: s.update(classes=[1, 2, 3, 4, 5, 6]),
    "duplicate classes": lambda s: s.update(classes=["a"] * 6),
    "model not a dict": lambda s: s.update(model=[1]),
    "n_hidden huge": lambda s: s["model"].update(n_hidden=10 ** 12),
    "bin_s negative": lambda s: s["encoding"].update(bin_s=-1.0),
    "weights outside": lambda s: s["weights"].update(file="../elsewhere/model.safetensors"),
    "weights absolute": lambda s: s["weights"].update(file="/etc/passwd"),
    "sha not hex": lambda s: s["weights"].update(sha256={"x": 1}),
    "name a dict": lambda s: s.update(name={"a": 1}),
}


@pytest.mark.parametrize("case", sorted(BAD_SPECS))
def test_bad_model_json_is_one_model_error(model, case):
    spec = _spec(model)
    BAD_SPECS[case](spec)
    _write(model, json.dumps(spec, allow_nan=True))
    with pytest.raises(ModelError) as ei:
        load_checkpoint(model)
    assert str(model) in str(ei.value)


def test_deeply_nested_model_json_is_refused(model):
    _write(model, "[" * 200_000 + "]" * 200_000)
    with pytest.raises(ModelError):
        load_checkpoint(model)
    nested: object = 1
    for _ in range(100):
        nested = {"x": nested}
    with pytest.raises(ModelError, match="nested deeper"):
        validate_spec({"training_data": nested}, model / "model.json")


def test_sighup_with_malformed_model_json_keeps_serving_and_counts(tmp_path, model):
    d, sink = _daemon(tmp_path, model, emit="final")
    try:
        good = _spec(model)
        old_sha = d.handle.sha256
        for bad in ('{"format": "trafficsnn-snn", "version": 1, "temperature": [1]}',
                    json.dumps(dict(good, temperature=[1, 2])),
                    "[" * 100_000,
                    json.dumps({**good, "weights": {**good["weights"], "tensors": {"hidden.weight": 7}}})):
            _write(model, bad)
            assert d.reload() is False
        assert d.counters["reload_failed"] == 4 and d.handle.sha256 == old_sha
        # the old model still classifies
        assert d.engine.process([wire.decode(wire.encode_updates([_flow(1)]))])
    finally:
        d._close()


def test_reload_that_changes_only_model_json_is_applied(tmp_path, model):
    d, sink = _daemon(tmp_path, model, emit="update")
    try:
        d.engine.process([wire.decode(wire.encode_updates([_flow(1, final=False)]))])
        assert d.engine.active_flows == 1
        spec = _spec(model)
        _write(model, dict(spec, temperature=7.5, name="renamed", classes=[c + "-x" for c in spec["classes"]]))
        assert d.reload() is True
        assert d.handle.temperature == 7.5 and d.handle.model_id == "renamed"
        assert d.engine.active_flows == 1  # same weights: the flow's state is kept
        vs = d.engine.process([wire.decode(wire.encode_updates([_flow(1, n=10, seq=40, t0=1004.5,
                                                                       sensor_ts0=1000.0)]))])
        assert vs and vs[0].label.endswith("-x") and vs[0].model_id == "renamed"
    finally:
        d._close()


def test_bad_model_at_startup_exits_2_with_one_line(tmp_path, model, capsys):
    from trafficsnn.cli import main

    _write(model, json.dumps(dict(_spec(model), temperature="hot")))
    with pytest.raises(SystemExit) as ei:
        main(["classify", "--bind", f"ipc://{tmp_path}/s", "--model", str(model), "--device", "cpu", "-q"])
    assert ei.value.code == 2
    err = capsys.readouterr().err
    assert "temperature" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


# ------------------------------------------------------------------ 2. verdict JSON is always JSON

def _strict_json(text: str):
    def no(c):
        raise ValueError(f"{c} in verdict JSON")
    return json.loads(text, parse_constant=no)


def test_nan_model_output_gives_no_nan_verdict(model):
    import dataclasses

    from trafficsnn.serve.engine import ModelHandle, StreamingClassifier

    h = dataclasses.replace(ModelHandle.load(model, "cpu"), temperature=float("nan"))
    eng = StreamingClassifier(h, emit="update")
    vs = eng.process([wire.decode(wire.encode_updates([_flow(1, final=False), _flow(2)]))])
    vs += eng.flush_open()
    assert vs == [] and eng.drops["verdict_not_finite"] >= 2


def test_verdict_json_has_no_nan_or_infinity():
    from trafficsnn.serve.sinks import Verdict

    v = Verdict(key=FlowKey(0, 6, 0, 1, 2, 0, 3, 4), flow_id=1, sensor="s", label="a", confidence=float("nan"),
                probabilities={"a": float("nan"), "b": float("inf")}, packets=3, first_ts=float("inf"),
                verdict_ts=1.0, model_id="m", model_sha256="0" * 64, latency_s=float("-inf"))
    fast = _strict_json(v.to_json())
    assert fast == v.to_dict() and fast["confidence"] is None and fast["probabilities"]["b"] is None
    json.dumps(v.to_dict(), allow_nan=False)


# ------------------------------------------------------------------ 3. memory: what one peer can cost

def _push(tmp_path, ctx):
    s = ctx.socket(zmq.PUSH)
    s.linger = 2000
    s.connect(f"ipc://{tmp_path}/u")
    return s


def _pump(d: ClassifierDaemon, want: int, timeout: float = 5.0) -> int:
    """Receive until ``want`` messages have been read off the socket."""
    import time

    got, deadline = 0, time.monotonic() + timeout
    while got < want and time.monotonic() < deadline:
        if d.sock.poll(50):
            got += d._receive()
    return got


def test_oversize_messages_and_updates_are_dropped_and_counted(tmp_path, model):
    d, sink = _daemon(tmp_path, model, max_update_packets=100, batch_packets=1000, emit="final")
    push = _push(tmp_path, d.ctx)
    try:
        push.send_multipart(wire.encode_updates([_flow(1, n=101)]))                  # one update too long
        push.send_multipart(wire.encode_updates([_flow(i, n=90) for i in range(12)]))  # 1080 packets > 1000
        push.send_multipart(wire.encode_updates([_flow(2, n=50)]))                   # fine
        assert _pump(d, 3) == 3
        assert d.drops["oversize_update"] == 1 and d.drops["oversize_message"] == 1
        assert d.counters["oversize_packets_dropped"] == 101 + 1080
        assert d.batcher.packets == 50
        snap = d.prometheus_snapshot()["counters"]["drops_total"]
        assert snap["oversize_update"] == 1 and snap["oversize_message"] == 1
    finally:
        push.close(0)
        d._close()


def test_micro_batch_never_exceeds_batch_packets(tmp_path, model):
    d, sink = _daemon(tmp_path, model, batch_packets=100, emit="final")
    push = _push(tmp_path, d.ctx)
    seen: list[int] = []
    orig = d.engine.process
    d.engine.process = lambda items, *a, **k: (seen.append(sum(b.n_packets for b in items)), orig(items, *a, **k))[1]
    try:
        for i in range(5):
            push.send_multipart(wire.encode_updates([_flow(i, n=60)]))
        assert _pump(d, 5) == 5
        d._process()
        assert seen and max(seen) <= 100 and sum(seen) == 300
    finally:
        push.close(0)
        d._close()


def test_pull_socket_refuses_frames_above_max_message_size(tmp_path, model):
    d, sink = _daemon(tmp_path, model, max_message_mb=0.01)
    try:
        assert d.sock.getsockopt(zmq.MAXMSGSIZE) == int(0.01 * (1 << 20))
        big = _push(tmp_path, d.ctx)
        big.send_multipart(wire.encode_updates([_flow(1, n=2000)]))  # a 16 kB ts frame: peer disconnected
        small = _push(tmp_path, d.ctx)
        small.send_multipart(wire.encode_updates([_flow(2, n=20)]))
        assert _pump(d, 1) == 1 and d.batcher.packets == 20
        assert _pump(d, 1, timeout=0.5) == 0
        big.close(0)
        small.close(0)
    finally:
        d._close()


def test_receive_queue_must_be_bounded():
    from trafficsnn.errors import ConfigError

    with pytest.raises(ConfigError, match="rcvhwm"):
        ClassifyConfig(bind=("ipc:///x",), rcvhwm=0).validate()


# ------------------------------------------------------------------ 4. STATS abuse

@pytest.mark.parametrize("body", [{"updates_dropped": "lots"}, {"x": [1, 2]}, {"x": None}, {"x": True},
                                  {"x": -1}, {"x": {"y": "z"}}, {"x": {"y": {"z": 1}}}, {"k" * 65: 1},
                                  {f"c{i}": i for i in range(257)}, [1, 2]])
def test_stats_bodies_that_are_not_counters_are_malformed(body):
    frames = wire.encode_stats({}, sensor="s")
    frames[1] = json.dumps(body).encode()
    with pytest.raises(wire.WireError) as ei:
        wire.decode(frames)
    assert ei.value.kind == "bad_stats"


def test_real_agent_counters_are_valid_stats():
    body = {"packets": 3, "updates_dropped": 0, "decode": {"ok": 5, "truncated": 1}, "kernel_drops": 0.0}
    assert wire.decode(wire.encode_stats(body, sensor="s")).stats == body
    frames = wire.encode_stats({}, sensor="s")
    frames[1] = b"{" + b'"a":1,' * 20_000 + b'"b":1}'  # 120 kB
    with pytest.raises(wire.WireError, match="too_large"):
        wire.decode(frames)


def test_stats_abuse_never_breaks_metrics_and_the_sensor_table_is_bounded(tmp_path, model):
    from prometheus_client import generate_latest

    from trafficsnn.serve.metrics import Metrics

    d, sink = _daemon(tmp_path, model, max_sensors=8)
    d.metrics = Metrics(d.prometheus_snapshot)  # the registry the HTTP endpoint serves (no port needed)
    push = _push(tmp_path, d.ctx)
    try:
        bad = wire.encode_stats({}, sensor="evil")
        bad[1] = b'{"updates_dropped": "x"}'
        push.send_multipart(bad)
        for i in range(20):
            push.send_multipart(wire.encode_stats({"updates_dropped": i}, sensor=f"s{i}", eos=i == 19))
        assert _pump(d, 21) == 21
        assert d.wire_stats.errors["bad_stats"] == 1
        assert list(d.sensors) == [f"s{i}" for i in range(12, 20)] and d.counters["sensors_evicted"] == 12
        assert d.eos == {"s19"}
        text = generate_latest(d.metrics.registry).decode()
        assert 'trafficsnn_sensor_updates_dropped_total{sensor="s19"} 19.0' in text
        assert 'trafficsnn_drops_total{cause="malformed_bad_stats"} 1.0' in text
        assert "trafficsnn_sensors_evicted_total 12.0" in text
    finally:
        push.close(0)
        d._close()


def test_metrics_scrape_survives_a_non_numeric_value():
    from prometheus_client import CollectorRegistry, generate_latest

    from trafficsnn.serve.metrics import StatsCollector

    reg = CollectorRegistry()
    reg.register(StatsCollector(lambda: {"counters": {"a_total": "x", "b_total": {"s": "y", "t": 2, "_label": "k"}},
                                          "gauges": {"g": None}}))
    text = generate_latest(reg).decode()
    assert 'trafficsnn_b_total{k="t"} 2.0' in text and "trafficsnn_a_total" not in text


# ------------------------------------------------------------------ 5. SIGTERM while a sensor keeps sending

FLOOD = """
import sys, time
import numpy as np, zmq
from trafficsnn import wire
from trafficsnn.flows.records import FlowKey, FlowUpdate
s = zmq.Context().socket(zmq.PUSH)
s.connect(sys.argv[1])
fid = 0
while True:  # open flows that never end: only the shutdown flush gives them a verdict
    fid += 1
    ts = 1000.0 + np.linspace(0, 4.0, 30)
    u = FlowUpdate(flow_id=fid, key=FlowKey(0, 6, 0, fid, 1000, 0, 7, 443), start_ts=1000.0, seq=0, ts=ts,
                   size=np.full(30, 200, np.uint32), direction=(np.arange(30) % 2).astype(np.uint8), final=False)
    try:
        s.send_multipart(wire.encode_updates([u]), flags=zmq.NOBLOCK)
    except zmq.Again:
        pass
    time.sleep(0.0005)
"""


def test_stop_under_load_drains_within_the_bound_and_flushes_open_flows(tmp_path, model):
    import os
    import subprocess
    import sys
    import threading
    import time

    d, sink = _daemon(tmp_path, model, emit="final", drain_timeout=1.0)
    pings: list[float] = []
    d.notifier.watchdog = lambda now=None: pings.append(time.monotonic()) or True
    out: dict = {}
    runner = threading.Thread(target=lambda: out.update(d.run()), daemon=True)
    runner.start()
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    sender = subprocess.Popen([sys.executable, "-c", FLOOD, f"ipc://{tmp_path}/u"], env=env)
    try:
        deadline = time.monotonic() + 20
        while d.engine.counters["updates"] < 50 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert sender.poll() is None and d.engine.counters["updates"] >= 50
        t0 = time.monotonic()
        d.stop()
        runner.join(timeout=8)
        took = time.monotonic() - t0
        assert not runner.is_alive(), "the daemon kept draining under load"
        assert sender.poll() is None, "the sensor stopped sending: the drain was not under load"
        assert took < 1.0 + 2.5
        assert out["counters"]["drain_cut"] == 1
        assert sink.verdicts and all(v.reason == "shutdown" for v in sink.verdicts)
        assert len(sink.verdicts) == out["active_flows"]  # every open flow with a step got its verdict
        assert [p for p in pings if p >= t0], "the watchdog was not fed while draining"
    finally:
        sender.kill()
        sender.wait()
        d.stop()
        runner.join(timeout=5)


# ------------------------------------------------------------------ 6. the state slab never mixes flows

def test_more_new_flows_than_max_flows_in_one_message_never_mix(model):
    from trafficsnn.serve.engine import ModelHandle, StreamingClassifier

    h = ModelHandle.load(model, "cpu")
    flows = [_flow(i, n=20 + 7 * i, final=False) for i in range(6)]
    alone = {}
    for u in flows:
        e = StreamingClassifier(h, emit="update")
        (v,) = e.process([wire.decode(wire.encode_updates([u]))])
        alone[v.flow_id] = v.probabilities
    eng = StreamingClassifier(h, max_flows=4, emit="update")
    vs = eng.process([wire.decode(wire.encode_updates(flows))])
    assert len(vs) == 4 and eng.drops["state_full"] == 2
    assert eng.counters["packets_refused_state_full"] == sum(len(u.ts) for u in flows[4:])
    for v in vs:
        assert v.probabilities == pytest.approx(alone[v.flow_id], abs=1e-6)
    # a second such message: the old flows make room (LRU), the batch's own never do
    more = [_flow(10 + i, n=20, final=False) for i in range(6)]
    vs = eng.process([wire.decode(wire.encode_updates(more))])
    assert len(vs) == 4 and eng.drops["state_full"] == 4 and eng.active_flows == 4
    assert len({(v.flow_id) for v in vs}) == 4 and eng.counters["state_evicted"] == 4


# ------------------------------------------------------------------ 7. restarts: gaps and partial flows

def test_verdicts_on_flows_whose_start_or_middle_was_lost_say_partial(model):
    from trafficsnn.serve.engine import ModelHandle, StreamingClassifier

    eng = StreamingClassifier(ModelHandle.load(model, "cpu"), emit="final")
    whole = _flow(1, n=30)
    late = _flow(2, n=30, seq=500, t0=1010.0, sensor_ts0=1000.0)      # a restarted classifier: start missed
    head = _flow(3, n=20, final=False)
    tail = _flow(3, n=20, seq=25, t0=1005.0, sensor_ts0=1000.0)       # 5 packets lost in between
    vs = eng.process([wire.decode(wire.encode_updates([whole, late, head]))])
    vs += eng.process([wire.decode(wire.encode_updates([tail]))])
    by = {v.flow_id: v for v in vs}
    assert not by[1].partial and by[2].partial and by[3].partial
    assert eng.drops["flow_start_missed"] == 1 and eng.drops["gap_updates"] == 1 and eng.drops["gap_packets"] == 5
    assert _strict_json(by[2].to_json())["partial"] is True and by[1].to_dict()["partial"] is False
