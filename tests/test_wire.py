"""Wire protocol: roundtrip over a real ZeroMQ socket, validation, and a fuzz test."""
from __future__ import annotations

import struct

import numpy as np
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trafficsnn import wire
from trafficsnn.flows.records import FlowKey, FlowUpdate


def _updates(n: int = 3, seed: int = 0) -> list[FlowUpdate]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        k = int(rng.integers(0, 6))
        key = FlowKey(vlan=i, proto=6 if i % 2 else 17, client_hi=0, client_lo=0xFFFF_0A00_0001 + i,
                      client_port=40000 + i, server_hi=2**63 + i, server_lo=2**64 - 1 - i, server_port=443)
        ts = np.sort(rng.uniform(1e9, 1e9 + 10, k))
        out.append(FlowUpdate(flow_id=i, key=key, start_ts=1e9 + i, seq=i * 7, ts=ts,
                              size=rng.integers(40, 1500, k).astype(np.uint32),
                              direction=rng.integers(0, 2, k).astype(np.uint8),
                              tcp_flags=rng.integers(0, 256, k).astype(np.uint8),
                              final=bool(i % 2), reason="fin" if i % 2 else "", wire_bytes=123 * i))
    return out


def _same(a: FlowUpdate, b: FlowUpdate) -> None:
    assert (a.flow_id, a.key, a.start_ts, a.seq, a.final, a.reason, a.wire_bytes) == (
        b.flow_id, b.key, b.start_ts, b.seq, b.final, b.reason, b.wire_bytes)
    np.testing.assert_array_equal(a.ts, b.ts)
    np.testing.assert_array_equal(a.size, b.size)
    np.testing.assert_array_equal(a.direction, b.direction)
    np.testing.assert_array_equal(a.flags_or_zero(), b.flags_or_zero())


def test_roundtrip_over_real_zmq_socket_zero_copy():
    ups = _updates(5)
    ctx = zmq.Context.instance()
    pull, push = ctx.socket(zmq.PULL), ctx.socket(zmq.PUSH)
    try:
        port = pull.bind_to_random_port("tcp://127.0.0.1")
        push.connect(f"tcp://127.0.0.1:{port}")
        push.send_multipart(wire.encode_updates(ups, sensor="s1", msg_seq=9, sent_wall=5.0), copy=False)
        assert pull.poll(5000)
        frames = pull.recv_multipart(copy=False)
    finally:
        pull.close(0)
        push.close(0)
    msg = wire.decode(frames)
    assert isinstance(msg, wire.UpdateBatch)
    assert msg.sensor == "s1" and msg.header.msg_seq == 9 and len(msg) == 5
    assert not msg.ts.flags.owndata and not msg.ts.flags.writeable  # a read-only view over the frame
    for a, b in zip(ups, msg.updates()):
        _same(a, b)
    assert msg.keys["wall"].tolist() == [5.0] * 5


def test_empty_batch_and_stats_roundtrip():
    msg = wire.decode(wire.encode_updates([], sensor="x"))
    assert isinstance(msg, wire.UpdateBatch) and len(msg) == 0 and msg.n_packets == 0
    st_ = wire.decode(wire.encode_stats({"packets": 3}, sensor="x", eos=True))
    assert isinstance(st_, wire.StatsMessage) and st_.eos and st_.stats == {"packets": 3}


def _frames(n: int = 3) -> list[bytes]:
    return [bytes(memoryview(np.ascontiguousarray(f)).cast("B")) if isinstance(f, np.ndarray) else bytes(f)
            for f in (f.view(np.uint8) if isinstance(f, np.ndarray) else f for f in wire.encode_updates(_updates(n)))]


@pytest.mark.parametrize(
    "mutate, kind",
    [
        (lambda f: [b"XXXX" + f[0][4:]] + f[1:], "bad_magic"),
        (lambda f: [f[0][:4] + b"\x09" + f[0][5:]] + f[1:], "bad_version"),
        (lambda f: f[:-1], "frame_count"),
        (lambda f: f[:3] + [f[3][:-8]] + f[4:], "bad_length"),
        (lambda f: f[:2] + [struct.pack("<4q", 0, 5, 2, 9)] + f[3:], "bad_offsets"),
        (lambda f: f[:3] + [struct.pack("<d", float("nan")) + f[3][8:]] + f[4:], "bad_time"),
        (lambda f: f[:5] + [b"\x07" + f[5][1:]] + f[6:], "bad_direction"),
        (lambda f: [f[0][:10]], "short_header"),
    ],
)
def test_malformed_messages_raise_wire_error_by_kind(mutate, kind):
    frames = _frames(3)
    assert len(frames[5]) > 0
    with pytest.raises(wire.WireError) as ei:
        wire.decode(mutate(frames))
    assert ei.value.kind == kind


def test_wire_stats_counts_and_logs_once(caplog):
    ws = wire.WireStats()
    for _ in range(3):
        assert ws.decode([b"junk"]) is None
    assert ws.errors["short_header"] == 3
    assert sum("short_header" in r.getMessage() for r in caplog.records) == 1


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.binary(max_size=120), max_size=8))
def test_fuzz_random_frames_only_wire_error(frames):
    try:
        wire.decode(frames)
    except wire.WireError:
        pass


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_fuzz_mutated_valid_messages(data):
    frames = _frames(data.draw(st.integers(0, 4)))
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(frames) - 1))
        f = bytearray(frames[i])
        op = data.draw(st.sampled_from(["flip", "cut", "extend", "drop", "dup"]))
        if op == "flip" and f:
            j = data.draw(st.integers(0, len(f) - 1))
            f[j] = data.draw(st.integers(0, 255))
            frames[i] = bytes(f)
        elif op == "cut":
            frames[i] = bytes(f[: data.draw(st.integers(0, len(f)))])
        elif op == "extend":
            frames[i] = bytes(f) + data.draw(st.binary(max_size=16))
        elif op == "drop" and len(frames) > 1:
            frames.pop(i)
        elif op == "dup":
            frames.insert(i, frames[i])
    try:
        msg = wire.decode(frames)
    except wire.WireError:
        return
    # Whatever decodes must be safe to use.
    if isinstance(msg, wire.UpdateBatch):
        for u in msg.updates():
            assert len(u.ts) == len(u.size) == len(u.direction)
            assert np.isfinite(u.ts).all()
