"""Flow-statistics features, packet heads / prefixes, and the scikit-learn baselines (fit, logits, retrain-on-load)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from trafficsnn.errors import ModelError
from trafficsnn.snn.registry import encoder_for
from trafficsnn.train.baselines import BASELINES, baseline, prefix_samples, select_params
from trafficsnn.train.datasets import SampleCache, build_dataset
from trafficsnn.train.features import (FEATURE_NAMES, HEAD_PACKETS, N_FEATURES, TCP_FLAG_BITS, packet_head,
                                       packet_stats, prefix_features, sequence_features)
from trafficsnn.train.synth import synthesize

F = {n: i for i, n in enumerate(FEATURE_NAMES)}


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bl") / "data"
    synthesize(out, flows_per_class=4, captures_per_class=2, duration=(40, 45), seed=3, snaplen=96)
    return out


@pytest.fixture(scope="module")
def ds(synth, tmp_path_factory):
    return build_dataset(synth, encoder_for("improved"), cache=SampleCache(tmp_path_factory.mktemp("c")))


def test_feature_vector_counts_flags_and_protocol():
    rel = np.array([0.0, 0.1, 0.3, 0.6, 1.0])
    size = np.array([60, 60, 52, 1500, 40])
    d = np.array([0, 1, 0, 1, 0])
    flags = np.array([0x02, 0x12, 0x10, 0x18, 0x11], np.uint8)     # SYN, SYN+ACK, ACK, PSH+ACK, FIN+ACK
    f = packet_stats(rel, size, d, flags, 6)
    assert f.shape == (N_FEATURES,) == (len(FEATURE_NAMES),)
    assert f[F["all_syn_pkts"]] == 2 and f[F["c2s_syn_pkts"]] == 1 and f[F["s2c_syn_pkts"]] == 1
    assert f[F["all_ack_pkts"]] == 4 and f[F["s2c_psh_pkts"]] == 1 and f[F["c2s_fin_pkts"]] == 1
    assert f[F["all_rst_pkts"]] == 0 and f[F["l4_proto"]] == 6
    assert f[F["c2s_pkts"]] == 3 and f[F["s2c_bytes"]] == 1560 and f[F["all_duration"]] == pytest.approx(1.0)
    assert f[F["c2s_iat_mean"]] == pytest.approx(0.5) and f[F["s2c_size_max"]] == 1500
    g = packet_stats(rel, size, d)                                  # no flags, no protocol: zeros
    assert g[F["all_syn_pkts"]] == 0 and g[F["l4_proto"]] == 0
    other = [i for i, n in enumerate(FEATURE_NAMES)
             if n != "l4_proto" and not any(n.endswith(f"_{b}_pkts") for b in TCP_FLAG_BITS)]
    assert np.array_equal(f[other], g[other])


def test_head_roundtrip_and_prefix():
    rng = np.random.default_rng(0)
    rel = np.cumsum(rng.exponential(0.01, 30))
    size = rng.integers(40, 1500, 30)
    d = rng.integers(0, 2, 30)
    fl = rng.integers(0, 256, 30).astype(np.uint8)
    h = packet_head(rel, size, d, fl, 17)[None]
    assert h.shape == (1, HEAD_PACKETS, 5) and np.isnan(h[0, 30:]).all()
    np.testing.assert_allclose(prefix_features(h)[0], packet_stats(rel, size, d, fl, 17), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(prefix_features(h, 7)[0], packet_stats(rel[:7], size[:7], d[:7], fl[:7], 17),
                               rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError):
        prefix_features(h, HEAD_PACKETS + 1)
    s = sequence_features(h, 10)
    assert s.shape == (1, 20)
    assert np.array_equal(s[0, :10], np.where(d[:10] == 0, size[:10], -size[:10]))
    assert s[0, 10] == pytest.approx(-6.0) and s[0, 11] == pytest.approx(np.log10(rel[1] - rel[0] + 1e-6), rel=1e-4)
    s3 = sequence_features(h, 10, k=3)                              # only 3 packets seen: the rest padded
    assert np.array_equal(s3[0, :3], s[0, :3]) and (s3[0, 3:10] == 0).all() and (s3[0, 13:] == -6).all()


def test_samples_carry_heads_and_prefixes_match_max_packets(synth, ds, tmp_path):
    assert ds.head.shape == (len(ds), HEAD_PACKETS, 5)
    short = (~np.isnan(ds.head[:, :, 0])).sum(1) < HEAD_PACKETS
    np.testing.assert_allclose(prefix_features(ds.head)[short], ds.features[short], rtol=1e-3, atol=1e-5)
    d10 = build_dataset(synth, encoder_for("improved"), max_packets=10, cache=SampleCache(tmp_path / "c"))
    assert list(d10.flow) == list(ds.flow)
    np.testing.assert_allclose(prefix_features(ds.head, 10), d10.features, rtol=1e-3, atol=1e-5)
    p = prefix_samples(ds, 10)
    np.testing.assert_allclose(p.features, d10.features, rtol=1e-3, atol=1e-5)
    assert np.isnan(p.head[:, 10:]).all() and np.array_equal(p.head[:, :10], ds.head[:, :10], equal_nan=True)
    assert ds.subset([1, 0]).head.shape == (2, HEAD_PACKETS, 5)
    assert (ds.features[:, F["l4_proto"]] > 0).all()


@pytest.mark.parametrize("kind", sorted(BASELINES))
def test_fit_logits_save_load(ds, tmp_path, kind):
    cls = baseline(kind)
    m = cls(len(ds.classes), seed=3)
    x = m.inputs(ds)
    m.fit(x, ds.y)
    z = m.decision(x)
    assert z.shape == (len(ds), len(ds.classes)) and np.isfinite(z).all()
    assert (z.argmax(1) == ds.y).mean() > 0.5                       # it learned something on its training set
    m.save(tmp_path / kind, {"classes": ds.classes})
    assert not list((tmp_path / kind).glob("*.pkl"))
    m2, spec = cls.load(tmp_path / kind)
    assert spec["model_kind"] == kind and spec["baseline"]["params"] == m.params
    np.testing.assert_array_equal(m2.decision(x), z)               # retrained on load: the same model


def test_unseen_class_and_unknown_params(ds):
    m = baseline("gbt")(len(ds.classes) + 1, max_iter=5).fit(ds.features, ds.y)
    assert (m.decision(ds.features)[:, -1] == -30).all()
    with pytest.raises(ModelError, match="unknown hyper-parameter"):
        baseline("rf")(3, n_jobs=8)
    with pytest.raises(ModelError, match="unknown baseline"):
        baseline("svm")


def test_load_refuses_tampered_or_pickled_files(ds, tmp_path):
    m = baseline("knn")(len(ds.classes)).fit(sequence_features(ds.head), ds.y)
    d = tmp_path / "m"
    m.save(d, {"classes": ds.classes})
    with np.load(d / "train.npz") as z:
        a = {k: z[k] for k in z.files}
    # labels changed: the refitted model no longer gives the stored probe logits
    np.savez(d / "train.npz", **{**a, "y": (a["y"] + 1) % len(ds.classes)})
    with pytest.raises(ModelError, match="does not reproduce"):
        baseline("knn").load(d)
    # probe logits changed: they no longer match model.json's hash
    np.savez(d / "train.npz", **{**a, "probe_logits": a["probe_logits"] + 1})
    with pytest.raises(ModelError, match="hash"):
        baseline("knn").load(d)
    # an object array (would need pickle) is refused by np.load(allow_pickle=False)
    np.savez(d / "train.npz", **{**a, "x": np.array([{"a": 1}], dtype=object)})
    with pytest.raises(ModelError, match="cannot read"):
        baseline("knn").load(d)
    np.savez(d / "train.npz", **a)
    spec = json.loads((d / "model.json").read_text())
    spec["baseline"]["params"] = {"n_neighbors": [1, 2]}
    (d / "model.json").write_text(json.dumps(spec))
    with pytest.raises(ModelError, match="wrong type"):
        baseline("knn").load(d)


def test_select_params_uses_validation_only(ds):
    half = np.arange(len(ds)) % 2 == 0
    tr, va = ds.subset(np.flatnonzero(half)), ds.subset(np.flatnonzero(~half))
    params, scores = select_params("knn", tr, va, grid=[{"n_neighbors": 1}, {"n_neighbors": 3}])
    assert len(scores) == 2 and params == [{"n_neighbors": 1}, {"n_neighbors": 3}][int(np.argmax(scores))]
    assert select_params("knn1", tr, va) == ({}, [])


def _ndpi():
    root = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "ndpi" / "developer"
    return root if (root / "task.csv").is_file() else None


@pytest.mark.shared_data
@pytest.mark.skipif(_ndpi() is None, reason="../shared/data/ndpi absent")
def test_ndpi_features_have_tcp_flags_and_protocols(tmp_path):
    from trafficsnn.train.runner import TrainOptions, load_samples

    root = _ndpi()
    ds = load_samples(root / "pcap", TrainOptions(labels_csv=str(root / "task.csv"), quiet=True,
                                                  cache_dir=str(tmp_path / "c")))
    assert len(ds) >= 480
    proto = ds.features[:, F["l4_proto"]]
    assert set(np.unique(proto)) <= {6.0, 17.0, 50.0, 47.0, 132.0} and {6.0, 17.0} <= set(np.unique(proto))
    tcp = proto == 6
    assert (ds.features[tcp, F["all_ack_pkts"]] > 0).mean() > 0.9
    assert (ds.features[~tcp, F["all_syn_pkts"]] == 0).all()
