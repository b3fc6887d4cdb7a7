"""Formats that travel: extract to CSV / Parquet / JSON lines with one vocabulary, Community ID,
Zeek names; unknown extensions are an error; verdict JSON lines to CSV / Parquet."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from trafficsnn.cli import main
from trafficsnn.flows import read_flows
from trafficsnn.flows.community_id import flow_community_id
from trafficsnn.flows.store import PACKET_FIELDS, TABLE_FIELDS, ZEEK_NAMES
from trafficsnn.serve.demo import write_demo_pcap


@pytest.fixture(scope="module")
def pcap(tmp_path_factory):
    p = tmp_path_factory.mktemp("cap") / "demo.pcap"
    write_demo_pcap(p, n_flows=12, packets_per_flow=15, duration=5.0, seed=4)
    return p


@pytest.fixture(scope="module")
def npz(pcap):
    out = pcap.with_name("flows.npz")
    main(["extract", str(pcap), "-o", str(out), "-q"])
    return read_flows(out)


def _by_id(rows, key="flow_id"):
    return {int(r[key]): r for r in rows}


def test_csv_has_the_table_vocabulary_and_matches_npz(tmp_path, pcap, npz):
    out = tmp_path / "flows.csv"
    main(["extract", str(pcap), "-o", str(out), "-q"])
    with open(out, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == list(TABLE_FIELDS)          # flow-level only: no packet lists in CSV
    assert len(rows) == len(npz) == 12
    by = _by_id(rows)
    for f in npz:
        r = by[f.flow_id]
        assert r["client_ip"] == f.key.client_ip and int(r["server_port"]) == f.key.server_port
        assert r["proto_name"] == {6: "tcp", 17: "udp"}[f.key.proto] and int(r["proto"]) == f.key.proto
        assert r["community_id"] == flow_community_id(f.key) and r["community_id"].startswith("1:")
        assert float(r["first_ts"]) == f.first_ts                      # repr: no precision lost
        assert int(r["c2s_pkts"]) == f.c2s_pkts and int(r["s2c_bytes"]) == f.s2c_bytes
        assert int(r["c2s_ip_bytes"]) == int(f.size[f.direction == 0].sum())
        assert int(r["s2c_ip_bytes"]) == int(f.size[f.direction == 1].sum())
        assert r["end_reason"] == f.end_reason


def test_parquet_round_trip_with_packet_lists_and_without(tmp_path, pcap, npz):
    pq = pytest.importorskip("pyarrow.parquet")
    out = tmp_path / "flows.parquet"
    main(["extract", str(pcap), "-o", str(out), "-q"])
    t = pq.read_table(out)
    assert t.column_names == [*TABLE_FIELDS, *PACKET_FIELDS]
    rows = _by_id(t.to_pylist())
    for f in npz:
        r = rows[f.flow_id]
        np.testing.assert_allclose(r["t"], f.ts - f.first_ts, atol=1e-9)
        assert r["size"] == f.size.tolist() and r["dir"] == f.direction.tolist()
        assert r["tcp_flags"] == f.tcp_flags.tolist()
        assert r["community_id"] == flow_community_id(f.key) and r["client_ip"] == f.key.client_ip
    lean = tmp_path / "lean.parquet"
    main(["extract", str(pcap), "-o", str(lean), "-q", "--no-packets"])
    assert pq.read_table(lean).column_names == list(TABLE_FIELDS)


def test_jsonl_uses_the_same_vocabulary(tmp_path, pcap):
    out = tmp_path / "flows.jsonl"
    main(["extract", str(pcap), "-o", str(out), "-q"])
    row = json.loads(out.read_text().splitlines()[0])
    assert list(row) == [*TABLE_FIELDS, *PACKET_FIELDS]


def test_zeek_names(tmp_path, pcap, npz):
    out = tmp_path / "zeek.csv"
    main(["extract", str(pcap), "-o", str(out), "-q", "--zeek-names"])
    with open(out, newline="") as fh:
        rows = list(csv.DictReader(fh))
    want = [ZEEK_NAMES.get(k, k) for k in TABLE_FIELDS]
    assert list(rows[0]) == want
    for name in ("ts", "duration", "id.orig_h", "id.orig_p", "id.resp_h", "id.resp_p", "proto", "ip_proto",
                 "orig_pkts", "resp_pkts", "orig_ip_bytes", "resp_ip_bytes", "community_id"):
        assert name in want
    f = npz[0]
    r = _by_id(rows)[f.flow_id]
    assert r["id.orig_h"] == f.key.client_ip and r["proto"] in ("tcp", "udp")
    assert int(r["orig_pkts"]) == f.c2s_pkts and float(r["ts"]) == f.first_ts
    j = tmp_path / "zeek.jsonl"
    main(["extract", str(pcap), "-o", str(j), "-q", "--zeek-names"])
    assert "id.orig_h" in json.loads(j.read_text().splitlines()[0])


@pytest.mark.parametrize("name", ["flows.zip", "flows", "flows.txt"])
def test_unknown_extension_is_one_line_exit_2(tmp_path, pcap, capsys, name):
    out = tmp_path / name
    with pytest.raises(SystemExit) as ei:
        main(["extract", str(pcap), "-o", str(out), "-q"])
    assert ei.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and ".parquet" in err
    assert not out.exists()
    # --format names it explicitly
    main(["extract", str(pcap), "-o", str(out), "-q", "--format", "csv"])
    assert out.read_text().startswith("flow_id,community_id,")


def test_empty_table_still_has_a_header(tmp_path):
    from trafficsnn.flows.store import TableWriter

    w = TableWriter(tmp_path / "e.csv", "csv")
    assert w.close() == 0
    assert (tmp_path / "e.csv").read_text().strip() == ",".join(TABLE_FIELDS)


@pytest.fixture(scope="module")
def verdict_file(tmp_path_factory, pcap):
    import trafficsnn
    from trafficsnn.serve.demo import make_random_model

    d = tmp_path_factory.mktemp("vmodel")
    model = make_random_model(d / "m", classes=["x", "y"], seed=2)
    vs = trafficsnn.Classifier(model, device="cpu").classify(pcap)
    path = d / "verdicts.jsonl"
    path.write_text("".join(json.dumps(v) + "\n" for v in vs) + "not json\n")
    return path, vs


def test_verdicts_to_csv_and_parquet(tmp_path, verdict_file, capsys):
    path, vs = verdict_file
    out = tmp_path / "v.csv"
    main(["verdicts", str(path), "-o", str(out)])
    assert "1 line(s) that are not verdicts" in capsys.readouterr().err
    with open(out, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(vs) == 12
    for r, v in zip(rows, vs):
        assert r["community_id"] == v["community_id"] and r["client_ip"] == v["flow"]["client"]
        assert r["proto_name"] in ("tcp", "udp") and r["class"] == v["class"]
        assert float(r["p_x"]) == v["probabilities"]["x"] and r["model_id"] == v["model"]["id"]
    pq = pytest.importorskip("pyarrow.parquet")
    outp = tmp_path / "v.parquet"
    main(["verdicts", str(path), "-o", str(outp), "-q", "--zeek-names"])
    t = pq.read_table(outp).to_pylist()
    assert [r["community_id"] for r in t] == [v["community_id"] for v in vs]
    assert t[0]["id.orig_h"] == vs[0]["flow"]["client"] and t[0]["ts"] == vs[0]["first_ts"]


def test_verdicts_bad_extension_is_exit_2(tmp_path, verdict_file, capsys):
    with pytest.raises(SystemExit) as ei:
        main(["verdicts", str(verdict_file[0]), "-o", str(tmp_path / "v.xlsx")])
    assert ei.value.code == 2 and capsys.readouterr().err.startswith("error: cannot tell the format")
