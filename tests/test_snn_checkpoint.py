"""Checkpoints: safetensors + model.json round trip, and clear errors on corruption or mismatch."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from trafficsnn.errors import ModelError
from trafficsnn.snn.checkpoint import default_model_path, load_checkpoint, save_checkpoint
from trafficsnn.snn.encoding import ImprovedEncoder, PaperEncoder
from trafficsnn.snn.presets import build_model

CLASSES = ["Browsing", "Chat", "FileTransfer", "Streaming", "VPN_Tor", "VoIP"]


@pytest.fixture()
def saved(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    m = build_model("improved", len(CLASSES))
    save_checkpoint(tmp_path / "m", m, {"classes": CLASSES, "metrics": {"macro_f1": 0.5},
                                        "training_data": {"samples": 10}, "temperature": 1.3})
    return tmp_path / "m"


def test_roundtrip(saved: Path):
    lm = load_checkpoint(saved)
    assert lm.classes == CLASSES and lm.temperature == pytest.approx(1.3)
    assert isinstance(lm.encoder, ImprovedEncoder) and lm.encoder.n_steps == 300
    assert lm.spec["metrics"]["macro_f1"] == 0.5 and lm.spec["preset"] == "improved"
    assert len(lm.sha256) == 64 and not lm.model.training
    torch.manual_seed(0)
    ref = build_model("improved", len(CLASSES))
    for (k, a), (_, b) in zip(lm.model.state_dict().items(), ref.state_dict().items()):
        assert torch.equal(a, b), k
    assert load_checkpoint(saved / "model.json").sha256 == lm.sha256
    assert load_checkpoint(saved, preset="improved", n_classes=6).classes == CLASSES


def test_paper_preset_defaults_and_float64(tmp_path: Path):
    m = build_model("paper").double()
    save_checkpoint(tmp_path, m)
    lm = load_checkpoint(tmp_path)
    assert len(lm.classes) == 14 and isinstance(lm.encoder, PaperEncoder)
    assert lm.model.hidden.weight.dtype == torch.float64


def test_no_pickle_in_weights(saved: Path):
    head = (saved / "model.safetensors").read_bytes()[:8]
    assert int.from_bytes(head, "little") < 1 << 20   # safetensors header length, not a pickle/zip


def _expect(path: Path, *words: str, **kw):
    with pytest.raises(ModelError) as ei:
        load_checkpoint(path, **kw)
    msg = str(ei.value)
    for w in words:
        assert w in msg, msg
    return msg


def test_truncated_weights(saved: Path):
    w = saved / "model.safetensors"
    w.write_bytes(w.read_bytes()[:-100])
    _expect(saved, "sha256", "corrupt")


def test_flipped_byte(saved: Path):
    w = saved / "model.safetensors"
    data = bytearray(w.read_bytes())
    data[-5] ^= 0x40
    w.write_bytes(bytes(data))
    _expect(saved, "sha256")


def test_truncated_and_rehashed_still_caught(saved: Path):
    """Someone fixes the hash after truncating: the safetensors parse fails cleanly."""
    import hashlib
    w = saved / "model.safetensors"
    w.write_bytes(w.read_bytes()[:-100])
    spec = json.loads((saved / "model.json").read_text())
    spec["weights"]["sha256"] = hashlib.sha256(w.read_bytes()).hexdigest()
    (saved / "model.json").write_text(json.dumps(spec))
    _expect(saved, "safetensors")


def test_bad_json(saved: Path):
    (saved / "model.json").write_text("{not json")
    _expect(saved, "not valid JSON")


def test_wrong_json_shapes_and_classes(saved: Path):
    spec = json.loads((saved / "model.json").read_text())
    bad = dict(spec, classes=CLASSES[:5])
    (saved / "model.json").write_text(json.dumps(bad))
    _expect(saved, "outputs")
    bad = json.loads(json.dumps(spec))
    bad["model"]["n_hidden"] = 50
    (saved / "model.json").write_text(json.dumps(bad))
    _expect(saved, "shape")
    (saved / "model.json").write_text(json.dumps(dict(spec, format="other")))
    _expect(saved, "not a trafficsnn")
    (saved / "model.json").write_text(json.dumps({k: v for k, v in spec.items() if k != "weights"}))
    _expect(saved, "required field")


def test_mismatch_with_request(saved: Path):
    _expect(saved, "preset", preset="paper")
    _expect(saved, "classes", n_classes=14)


def test_missing_files(saved: Path, tmp_path: Path):
    _expect(tmp_path / "nothing", "not found")
    (saved / "model.safetensors").unlink()
    _expect(saved, "missing")
    (saved / "model.json").unlink()
    _expect(saved, "missing")


def test_default_model_path(monkeypatch, tmp_path: Path):
    monkeypatch.setenv("TRAFFICSNN_MODEL", str(tmp_path))
    assert default_model_path() == tmp_path
    monkeypatch.delenv("TRAFFICSNN_MODEL")
    assert default_model_path().parts[-2:] == ("models", "ndpi6-snn")
