"""Datasets: folder / ISCX / label-CSV sources, first-N-packets option, and the sample cache."""
from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest

from trafficsnn.errors import ConfigError
from trafficsnn.flows import flows_from_capture
from trafficsnn.snn.encoding import ImprovedEncoder
from trafficsnn.snn.registry import encoder_for
from trafficsnn.train.datasets import SampleCache, build_dataset, file_sha256
from trafficsnn.train.synth import synthesize


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ds") / "data"
    synthesize(out, flows_per_class=3, captures_per_class=2, duration=(45, 50), seed=11, snaplen=96)
    return out


def test_folder_source_improved(synth, tmp_path):
    ds = build_dataset(synth, encoder_for("improved"), cache=SampleCache(tmp_path / "c"))
    assert ds.summary["source"] == "folder"
    assert ds.classes == ["Browsing", "Chat", "FileTransfer", "Video", "VoIP"]
    assert ds.class_counts() == {c: 3 for c in ds.classes}          # one sample per flow
    assert len(set(ds.capture.tolist())) == 10
    assert ds.features.shape == (15, ds.features.shape[1]) and np.isfinite(ds.features).all()
    x = ds.batch([0, 1, 2])
    assert x.n_samples == 3 and x.n_steps == 300 and x.n_inputs == 300
    # the sample equals the encoder applied to the flow (same function as the daemon)
    cap = synth / ds.capture[0]
    flow = next(iter(flows_from_capture([cap], idle_timeout=None, active_timeout=None, tcp_close=False)))
    ref = ImprovedEncoder(value=ds.encoding["value"]).flow(flow)   # the preset's value (log1p)
    s = ds.sample(0)
    assert np.array_equal(s.step, ref.step) and np.array_equal(s.value, ref.value)


def test_paper_windows_source(synth, tmp_path):
    ds = build_dataset(synth, encoder_for("paper"), cache=SampleCache(tmp_path / "c"))
    assert len(ds) >= 5
    assert ds.n_steps == 300 and ds.encoding["kind"] == "paper"
    # every window sums to its packet count; paper windows need >= 10 packets per direction
    vals = np.add.reduceat(ds.ev_value, ds.ev_off[:-1])
    assert (vals >= 11).all()


def test_max_packets(synth, tmp_path):
    ds = build_dataset(synth, encoder_for("improved"), max_packets=10, cache=SampleCache(tmp_path / "c"))
    sums = np.add.reduceat(ds.ev_value, ds.ev_off[:-1])
    assert (sums <= 10).all() and (sums >= 1).all()
    assert (ds.features[:, 0] <= 10).all()                        # all_pkts feature


def test_cache_hit_is_fast_and_identical(synth, tmp_path):
    cache_dir = tmp_path / "cache"
    a = build_dataset(synth, encoder_for("improved"), cache=SampleCache(cache_dir))
    c2 = SampleCache(cache_dir)
    b = build_dataset(synth, encoder_for("improved"), cache=c2)
    assert c2.hits == 10 and c2.misses == 0
    assert np.array_equal(a.ev_value, b.ev_value) and np.array_equal(a.features, b.features)
    assert list(a.flow) == list(b.flow)
    assert not list(cache_dir.glob("*.pkl")) and list(cache_dir.glob("*.npz"))
    # other parameters -> another key (miss)
    c3 = SampleCache(cache_dir)
    build_dataset(synth, encoder_for("improved"), max_packets=30, cache=c3)
    assert c3.misses == 10


def test_cache_keyed_by_content(synth, tmp_path):
    data = tmp_path / "copy"
    shutil.copytree(synth / "Chat", data / "Chat")
    shutil.copytree(synth / "VoIP", data / "VoIP")
    cache = SampleCache(tmp_path / "c")
    build_dataset(data, encoder_for("improved"), cache=cache)
    f = data / "Chat" / "chat_1.pcap"
    before = file_sha256(f)
    shutil.copy(synth / "Browsing" / "browsing_1.pcap", f)        # same name, other content
    c2 = SampleCache(tmp_path / "c")
    build_dataset(data, encoder_for("improved"), cache=c2)
    assert file_sha256(f) != before and c2.misses == 1 and c2.hits == 3


def test_iscx_layout_via_rules(synth, tmp_path):
    root = tmp_path / "iscx"
    (root / "NonVPN-PCAPs").mkdir(parents=True)
    (root / "VPN-PCAPS").mkdir()
    shutil.copy(synth / "Chat" / "chat_1.pcap", root / "NonVPN-PCAPs" / "skype_chat1a.pcap")
    shutil.copy(synth / "VoIP" / "voip_1.pcap", root / "VPN-PCAPS" / "vpn_skype_audio1.pcap")
    shutil.copy(synth / "Browsing" / "browsing_1.pcap", root / "NonVPN-PCAPs" / "email1a.pcap")
    ds = build_dataset(root, encoder_for("improved"), cache=SampleCache(tmp_path / "c"))
    assert ds.summary["source"] == "iscx"
    assert len(ds.classes) == 14
    assert set(ds.class_counts()[k] for k in ("Chat_nonVPN", "VOIP_VPN")) == {2}
    assert "NonVPN-PCAPs/email1a.pcap" in ds.summary["excluded_captures"]
    app = build_dataset(root, encoder_for("improved"), task="application", cache=SampleCache(tmp_path / "c"))
    assert app.classes == ["Video", "VOIP", "FileTransfer", "Chat", "Browsing"]


def test_label_csv_matches_unordered_endpoints(synth, tmp_path):
    rows = []
    for cls in ("Chat", "VoIP"):
        cap = synth / cls / f"{cls.lower()}_1.pcap"
        for i, fl in enumerate(flows_from_capture([cap], idle_timeout=None, active_timeout=None, tcp_close=False)):
            k = fl.key
            a, b = (k.client_ip, k.client_port), (k.server_ip, k.server_port)
            if i % 2:                                           # reversed endpoints must match too
                a, b = b, a
            rows.append({"pcap": cap.name, "l4": {6: "TCP", 17: "UDP"}[k.proto], "src_ip": a[0], "src_port": a[1],
                         "dst_ip": b[0], "dst_port": b[1], "task_class": f"label_{cls}", "cap20": i % 2})
    rows.append({"pcap": "chat_1.pcap", "l4": "TCP", "src_ip": "1.2.3.4", "src_port": 1, "dst_ip": "5.6.7.8",
                 "dst_port": 2, "task_class": "label_Chat", "cap20": 1})
    path = tmp_path / "labels.csv"
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    ds = build_dataset(synth, encoder_for("improved"), labels_csv=path, cache=SampleCache(tmp_path / "c"))
    assert ds.summary["source"] == "csv"
    assert ds.classes == ["label_Chat", "label_VoIP"]
    assert len(ds) == len(rows) - 1
    assert ds.summary["csv_rows_unmatched"] == 1
    assert ds.cap20.sum() == sum(r["cap20"] for r in rows[:-1])
    assert set(ds.capture.tolist()) == {"Chat/chat_1.pcap", "VoIP/voip_1.pcap"}


def test_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        build_dataset(tmp_path / "nope", encoder_for("improved"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no capture files"):
        build_dataset(tmp_path / "empty", encoder_for("improved"))
    bad = tmp_path / "bad.csv"
    bad.write_text("pcap,foo\n")
    (tmp_path / "empty" / "x.pcap").write_bytes(b"")
    with pytest.raises(ConfigError, match="lacks column"):
        build_dataset(tmp_path / "empty", encoder_for("improved"), labels_csv=bad)


def test_parallel_extraction_equals_serial(synth, tmp_path):
    a = build_dataset(synth, encoder_for("improved"), cache=SampleCache(tmp_path / "serial"))
    c = SampleCache(tmp_path / "par")
    b = build_dataset(synth, encoder_for("improved"), cache=c, jobs=2)
    assert c.prefetched == 10 and b.summary["cache"]["misses"] == 10
    assert np.array_equal(a.ev_value, b.ev_value) and np.array_equal(a.ev_step, b.ev_step)
    assert np.array_equal(a.features, b.features) and list(a.flow) == list(b.flow)


def test_jobs_0_uses_every_core_only_when_worth_it(synth, tmp_path, monkeypatch):
    import trafficsnn.train.datasets as datasets

    small = SampleCache(tmp_path / "small")
    build_dataset(synth, encoder_for("improved"), cache=small, jobs=0)
    assert small.prefetched == 0                      # a few MB: extracted in this process
    monkeypatch.setattr(datasets, "AUTO_JOBS_MIN_BYTES", 0)
    monkeypatch.setattr(datasets, "usable_cores", lambda: 2)
    big = SampleCache(tmp_path / "big")
    build_dataset(synth, encoder_for("improved"), cache=big, jobs=0)
    assert big.prefetched == 10                       # "large": worker processes, one per core


def test_extraction_workers_need_no_torch():
    # each -j worker starts a fresh interpreter: importing torch there cost ~2 CPU-s per worker
    code = ("import sys; from trafficsnn.snn.registry import encoder_for; import trafficsnn.train.datasets; "
            "[encoder_for(k) for k in ('packet', 'improved', 'paper')]; print('torch' in sys.modules)")
    import os
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)})
    assert out.stdout.strip() == "False"


def test_flows_of_classes_the_model_lacks_are_counted_and_said(synth, tmp_path, caplog):
    """Evaluating a model on data with classes it does not know: those flows are left out, not silently."""
    import logging

    with caplog.at_level(logging.WARNING, logger="trafficsnn"):
        ds = build_dataset(synth, encoder_for("improved"), cache=SampleCache(tmp_path / "c"),
                           classes=["Chat", "VoIP"])
    assert ds.classes == ["Chat", "VoIP"] and len(ds) == 6
    assert ds.summary["left_out_classes"] == {"Browsing": 3, "FileTransfer": 3, "Video": 3}
    assert "9 flow(s) of classes not in the model were left out" in caplog.text
