"""The shipped default model loads, matches its card, and classifies a synthetic flow."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from trafficsnn.snn.checkpoint import load_checkpoint
from trafficsnn.snn.encoding import SparseSample, collate

MODEL = Path(__file__).resolve().parent.parent / "models" / "ndpi6-snn"


def test_shipped_model_loads_and_has_a_card():
    lm = load_checkpoint(MODEL)
    assert lm.classes == ["Browsing", "Chat", "FileTransfer", "Streaming", "VPN_Tor", "VoIP"]
    assert lm.spec["preset"] == "packet" and lm.spec["architecture"] == "alif" and lm.encoder.kind == "packet"
    assert 0.0 <= lm.spec["unknown_threshold"] < 1.0
    assert 0.05 < lm.temperature < 20
    card = (MODEL / "MODEL_CARD.md").read_text()
    for word in ("## Data", "## Classes", "## Model", "## Metrics", "## Limits", "macro-F1"):
        assert word in card
    split = json.loads((MODEL / "split.json").read_text())
    assert all(len(v) == 1 for v in split["captures"].values())     # grouped: no capture on two sides


def test_shipped_model_scores_a_flow():
    lm = load_checkpoint(MODEL)
    enc = lm.encoder
    t = np.arange(0, 5, 0.02)                                        # 5 s of 20 ms VoIP-like packets
    d = np.arange(t.size) % 2
    s = enc.sample(t, np.full(t.size, 160), d, None, proto=17)
    assert isinstance(s, SparseSample)
    x = collate([s], enc.n_steps, enc.n_inputs)
    logits = lm.model(x).detach().numpy()
    assert logits.shape == (1, 6) and np.isfinite(logits).all()
