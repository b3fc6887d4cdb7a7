"""The Python API: trafficsnn.Flows (the extract engine, no torch), trafficsnn.Classifier (the daemon's
verdicts in process), to_pandas, python -m trafficsnn."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import trafficsnn
from trafficsnn.cli import main
from trafficsnn.flows import flows_from_capture, read_flows
from trafficsnn.flows.store import PACKET_FIELDS, TABLE_FIELDS
from trafficsnn.serve.demo import write_demo_pcap

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def pcaps(tmp_path_factory):
    d = tmp_path_factory.mktemp("caps")
    a, b = d / "a.pcap", d / "b.pcap"
    write_demo_pcap(a, n_flows=10, packets_per_flow=40, duration=6.0, seed=1)
    write_demo_pcap(b, n_flows=6, packets_per_flow=12, duration=3.0, seed=2)
    return a, b


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from trafficsnn.serve.demo import make_random_model

    return make_random_model(tmp_path_factory.mktemp("model"), classes=["a", "b", "c"], seed=3)


def test_flows_is_the_extract_engine(tmp_path, pcaps):
    a, b = pcaps
    out = tmp_path / "f.npz"
    main(["extract", str(a), str(b), "-o", str(out), "-q", "--idle-timeout", "0.3"])
    ref = read_flows(out)
    got = list(trafficsnn.Flows([a, b], idle_timeout=0.3))
    assert len(got) == len(ref) > 16          # the idle timeout cut some flows
    key = lambda f: (f.first_ts, f.key.client_port, f.key.server_port)   # noqa: E731
    for g, r in zip(sorted(got, key=key), sorted(ref, key=key)):
        assert g.key == r.key and g.end_reason == r.end_reason and g.c2s_pkts == r.c2s_pkts
        np.testing.assert_array_equal(g.ts, r.ts)
        np.testing.assert_array_equal(g.size, r.size)
    assert len(list(trafficsnn.Flows(str(a)))) == len(list(flows_from_capture(a, idle_timeout=120,
                                                                              active_timeout=1800)))
    whole = list(trafficsnn.Flows(a, whole_file=True))
    assert all(f.end_reason == "eof" for f in whole) and len(whole) == 10


def test_flows_validates_its_options(tmp_path, pcaps):
    with pytest.raises(FileNotFoundError, match="no such capture file or network interface"):
        trafficsnn.Flows(tmp_path / "nope.pcap")
    with pytest.raises(ValueError, match="idle_timeout"):
        trafficsnn.Flows(pcaps[0], idle_timeout=-1)
    with pytest.raises(ValueError, match="live interface"):
        trafficsnn.Flows(pcaps[0], duration=3)
    with pytest.raises(ValueError, match="at least one"):
        trafficsnn.Flows([])


def test_flows_to_pandas(pcaps):
    pytest.importorskip("pandas")
    df = trafficsnn.Flows(pcaps[0]).to_pandas()
    assert list(df.columns) == [*TABLE_FIELDS, *PACKET_FIELDS] and len(df) == 10
    r = df.iloc[0]
    assert r["community_id"].startswith("1:") and r["proto_name"] in ("tcp", "udp")
    assert len(r["size"]) == r["c2s_pkts"] + r["s2c_pkts"] and r["t"][0] == 0.0
    assert r["c2s_ip_bytes"] == int(np.asarray(r["size"])[np.asarray(r["dir"]) == 0].sum())
    lean = trafficsnn.Flows(pcaps[0]).to_pandas(packets=False, zeek_names=True)
    assert "size" not in lean.columns and {"ts", "id.orig_h", "orig_pkts", "proto"} <= set(lean.columns)


def test_import_and_flows_never_import_torch(pcaps):
    code = ("import sys; sys.modules['torch'] = None\n"   # a sensor host: importing torch fails
            "import trafficsnn\n"
            f"fl = list(trafficsnn.Flows({str(pcaps[0])!r}))\n"
            "assert len(fl) == 10\n"
            "from trafficsnn.flows.community_id import flow_community_id\n"
            "print(flow_community_id(fl[0].key))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                       env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("1:")


def test_classifier_verdicts_equal_the_daemons(pcaps, model_dir):
    from trafficsnn.serve.replay import replay

    a = pcaps[0]
    clf = trafficsnn.Classifier(model_dir, device="cpu", sensor="replay")
    assert clf.classes == ["a", "b", "c"]
    mine = clf.classify(trafficsnn.Flows(a))
    theirs = replay([str(a)], model=str(model_dir), inproc=True, device="cpu", emit="final").verdicts
    assert len(mine) == len(theirs) == 10
    drop = ("verdict_ts", "latency_ms")
    key = lambda v: (v["community_id"], v["first_ts"])   # noqa: E731
    for m, t in zip(sorted(mine, key=key), sorted(theirs, key=key)):
        assert set(m) - set(drop) == set(t) - set(drop)
        for k in set(m) - set(drop) - {"probabilities", "confidence"}:
            assert m[k] == t[k], k
        assert m["confidence"] == pytest.approx(t["confidence"], abs=1e-6)
        for c in clf.classes:
            assert m["probabilities"][c] == pytest.approx(t["probabilities"][c], abs=1e-6)
        assert m["community_id"].startswith("1:")


def test_streaming_emits_pieces_equal_whole(pcaps, model_dir):
    from trafficsnn.api import flow_updates

    flows = list(trafficsnn.Flows(pcaps[0]))
    for f in flows:
        ups = flow_updates(f, every=8, window=1.0)
        assert ups[-1].final and not any(u.final for u in ups[:-1]) and ups[-1].reason == f.end_reason
        np.testing.assert_array_equal(np.concatenate([u.ts for u in ups]), f.ts)
        assert [u.seq for u in ups] == list(np.cumsum([0] + [len(u) for u in ups[:-1]]))
        for u in ups:
            assert len(u) <= 8
            if len(u):
                w = np.floor((u.ts - f.ts[0]) / 1.0)
                assert w.min() == w.max()          # never across a window
    final = trafficsnn.Classifier(model_dir, device="cpu").classify(flows)
    upd = trafficsnn.Classifier(model_dir, device="cpu", emit="update").classify(flows)
    assert len(upd) > len(final)
    last = {v["flow_id"]: v for v in upd if v["final"]}
    for v in final:
        assert last[v["flow_id"]]["probabilities"] == v["probabilities"]
    first = trafficsnn.Classifier(model_dir, device="cpu", emit="first", min_confidence=0.0).classify(flows)
    assert len(first) == len(flows) and not any(v["final"] for v in first if v["packets"] > 8)


def test_verdicts_to_pandas_flat_vocabulary(pcaps, model_dir):
    pytest.importorskip("pandas")
    v = trafficsnn.Classifier(model_dir, device="cpu").classify(pcaps[1])
    df = v.to_pandas()
    assert len(df) == 6
    for c in ("community_id", "client_ip", "client_port", "server_ip", "proto", "proto_name", "class",
              "confidence", "p_a", "p_b", "p_c", "model_id", "first_ts"):
        assert c in df.columns, c
    assert (df["client_ip"] == [x["flow"]["client"] for x in v]).all()
    assert "ts" in v.to_pandas(zeek_names=True).columns


def test_shipped_model_is_the_default(pcaps):
    clf = trafficsnn.Classifier(device="cpu")
    assert len(clf.classes) == 6 and "VoIP" in clf.classes
    out = clf.classify(pcaps[1])
    assert len(out) == 6 and {v["model"]["id"] for v in out} == {clf.model_id}


def test_python_dash_m_is_the_command(tmp_path, pcaps):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-m", "trafficsnn", "--version"], capture_output=True, text=True,
                       env=env, timeout=60)
    assert r.returncode == 0 and trafficsnn.__version__ in r.stdout
    out = tmp_path / "f.jsonl"
    r = subprocess.run([sys.executable, "-m", "trafficsnn", "extract", str(pcaps[1]), "-o", str(out), "-q"],
                       capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    assert len(out.read_text().splitlines()) == 6 and "community_id" in json.loads(out.read_text().split("\n")[0])
    r = subprocess.run([sys.executable, "-m", "trafficsnn", "extract", str(pcaps[1]), "-o", str(tmp_path / "x.y")],
                       capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 2 and r.stderr.count("\n") == 1


def test_live_interface(tmp_path):
    from trafficsnn.packets.live import can_capture

    ok, why = can_capture("lo")
    if not ok:
        pytest.skip(f"no raw socket here: {why}")
    import socket
    import threading

    fl = trafficsnn.Flows("lo", bpf_filter="udp and port 40999", duration=1.5)

    def send():
        import time
        time.sleep(0.4)
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for _ in range(5):
            s.sendto(b"x" * 50, ("127.0.0.1", 40999))
        s.close()

    threading.Thread(target=send, daemon=True).start()
    got = [f for f in fl if f.key.server_port == 40999 or f.key.client_port == 40999]
    assert got and sum(f.packets for f in got) == 5


def test_missing_pandas_is_a_clear_error(pcaps):
    code = ("import sys; sys.modules['pandas'] = None\n"
            "import trafficsnn\n"
            f"try:\n    trafficsnn.Flows({str(pcaps[1])!r}).to_pandas()\n"
            "except trafficsnn.errors.TrafficSNNError as e:\n    print(e)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                       env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert "pip install 'trafficsnn[pandas]'" in r.stdout, r.stderr
