"""Splits: grouped by capture and session group, stratified, deterministic; the paper split warns."""
from __future__ import annotations

import numpy as np
import pytest

from trafficsnn.errors import ConfigError
from trafficsnn.train.splits import (NDPI_SESSION_GROUPS, LeakySplitWarning, check_grouped, grouped_kfold,
                                     grouped_split, manifest, paper_split, units_of)


def _toy(seed=0, n_caps=40, n_cls=4):
    rng = np.random.default_rng(seed)
    caps, labels = [], []
    for c in range(n_caps):
        k = int(rng.integers(1, 12))
        caps += [f"cap{c:02d}.pcap"] * k
        labels += [c % n_cls] * k
    return caps, np.array(labels)


NDPI_NAMES = ["openvpn.pcap", "openvpn_nohmac.pcapng", "openvpn_nohmac_tcp.pcapng", "wa_voice.pcap", "wa_video.pcap",
              "whatsapp_login_call.pcap", "whatsapp_login_chat.pcap", "KakaoTalk_chat.pcap", "KakaoTalk_talk.pcap",
              "reddit.pcap", "tumblr.pcap", "tls_1.2_unidirectional_client_no_cert.pcapng",
              "tls_1.2_unidirectional_server_no_cert.pcapng", "zoom.pcap", "zoom2.pcap", "signal.pcap"]


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_no_capture_on_two_sides(seed):
    caps, y = _toy(seed)
    side = grouped_split(caps, y, (0.6, 0.2, 0.2), seed)
    check_grouped(side, caps)
    assert set(side.tolist()) == {0, 1, 2}
    # stratified: every class on every side (10 captures per class here)
    for s in range(3):
        assert set(y[side == s].tolist()) == {0, 1, 2, 3}


def test_session_groups_stay_together():
    caps = [f"pcap/{n}" for n in NDPI_NAMES for _ in range(3)]
    y = np.arange(len(caps)) % 3
    units = units_of(sorted(set(caps)), NDPI_SESSION_GROUPS)
    assert units["pcap/wa_voice.pcap"] == units["pcap/wa_video.pcap"]
    assert units["pcap/openvpn.pcap"] == units["pcap/openvpn_nohmac_tcp.pcapng"]
    assert units["pcap/reddit.pcap"] == units["pcap/tumblr.pcap"]
    assert units["pcap/zoom.pcap"] != units["pcap/zoom2.pcap"]
    for seed in range(6):
        side = grouped_split(caps, y, (0.5, 0.25, 0.25), seed, NDPI_SESSION_GROUPS)
        check_grouped(side, caps, NDPI_SESSION_GROUPS)
        folds = grouped_kfold(caps, y, 4, seed, NDPI_SESSION_GROUPS)
        check_grouped(folds, caps, NDPI_SESSION_GROUPS)


def test_check_grouped_detects_leak():
    with pytest.raises(AssertionError):
        check_grouped(np.array([0, 1]), ["wa_voice.pcap", "wa_video.pcap"], NDPI_SESSION_GROUPS)


def test_deterministic_by_seed():
    caps, y = _toy(5)
    a = grouped_split(caps, y, seed=7)
    assert np.array_equal(a, grouped_split(caps, y, seed=7))
    assert any(not np.array_equal(a, grouped_split(caps, y, seed=s)) for s in range(8, 12))
    assert np.array_equal(grouped_kfold(caps, y, 5, 3), grouped_kfold(caps, y, 5, 3))


def test_kfold_covers_everything():
    caps, y = _toy(2)
    f = grouped_kfold(caps, y, 5, 0)
    assert set(f.tolist()) == set(range(5))
    check_grouped(f, caps)


def test_zero_fraction_side_empty():
    caps, y = _toy(1)
    side = grouped_split(caps, y, (0.8, 0.2, 0.0), 0)
    assert (side != 2).all() and (side == 1).any()


def test_bad_fractions():
    with pytest.raises(ConfigError):
        grouped_split(["a"], [0], (0.5, 0.5, 0.5))


def test_paper_split_warns_and_proportions():
    with pytest.warns(LeakySplitWarning, match="leak"):
        side = paper_split(1000, seed=0)
    assert (side == 0).sum() == 650 and (side == 2).sum() == 200 and (side == 1).sum() == 150
    assert np.array_equal(side, paper_split(1000, seed=0, warn=False))


def test_manifest_records_provenance():
    caps, y = _toy(0, n_caps=8, n_cls=2)
    side = grouped_split(caps, y, seed=0)
    flows = [f"{c}#{i}" for i, c in enumerate(caps)]
    m = manifest(side, caps, flows, y, ["a", "b"], "grouped", 0)
    assert len(m["samples"]) == len(caps)
    s0 = m["samples"][0]
    assert s0["capture"] == caps[0] and s0["flow"] == flows[0] and s0["split"] in ("train", "val", "test")
    assert all(len(v) == 1 for v in m["captures"].values())
    assert m["leaky"] is False
