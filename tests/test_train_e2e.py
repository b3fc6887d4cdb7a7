"""End to end on synthetic data: `synth` -> `train --epochs 1` -> `evaluate`, every model kind."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from trafficsnn.cli import cli


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("e2e") / "data"
    r = CliRunner().invoke(cli, ["synth", str(out), "--flows-per-class", "4", "--captures-per-class", "4",
                                 "--duration", "45", "50", "--snaplen", "96", "--seed", "5", "--quiet"])
    assert r.exit_code == 0, r.output
    return out


def _run(args):
    r = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return r


@pytest.mark.parametrize("preset,model,extra", [
    ("improved", "snn", []),
    ("paper", "snn", ["--split", "paper"]),
    ("improved", "mlp", []),
    ("improved", "gbt", []),
    ("improved", "rf", []),
    ("improved", "knn", []),
])
def test_train_then_evaluate(data, tmp_path, preset, model, extra):
    out, rep = tmp_path / "model", tmp_path / "report"
    cache = ["--cache-dir", str(tmp_path.parent / "cache")]
    r = _run(["train", str(data), "--out", str(out), "--preset", preset, "--model", model, "--epochs", "1",
              "--seed", "1", *cache, *extra])
    if extra:
        assert "leak" in r.output                       # the paper split warns loudly
    for f in ("model.json", "split.json", "summary.json", "test_report/report.json", "test_report/confusion.png"):
        assert (out / f).exists(), f
    spec = json.loads((out / "model.json").read_text())
    assert spec["classes"] == ["Browsing", "Chat", "FileTransfer", "Video", "VoIP"]
    assert 0.0 < spec["temperature"] < 100.0
    if model in ("snn", "mlp"):
        assert (out / "model.safetensors").exists() and (out / "curves.png").exists()
        log = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
        assert len(log) == 1 and {"train_loss", "val_loss", "train_macro_f1", "val_macro_f1"} <= set(log[0])
    split = json.loads((out / "split.json").read_text())
    if not extra:                                        # grouped: no capture on two sides
        assert all(len(v) == 1 for v in split["captures"].values())
    _run(["evaluate", str(out), str(data), "--out", str(rep), *cache, "--quiet"])
    report = json.loads((rep / "report.json").read_text())
    assert report["confusion"]["orientation"].startswith("C[true, pred]")
    assert np.asarray(report["confusion"]["matrix"]).sum() == report["n"] > 0
    assert 0.0 <= report["macro_f1"] <= 1.0
    assert {"ece_before", "ece_after", "temperature"} <= set(report["calibration"])
    assert (rep / "report.md").read_text().startswith("# Evaluation report")
    assert (rep / "confusion.png").stat().st_size > 1000


def test_evaluate_on_manifest_side(data, tmp_path):
    out = tmp_path / "m"
    cache = ["--cache-dir", str(tmp_path.parent / "cache")]
    _run(["train", str(data), "--out", str(out), "--model", "gbt", *cache, "--quiet"])
    _run(["evaluate", str(out), str(data), "--out", str(tmp_path / "r"), "--manifest", str(out / "split.json"),
          "--side", "test", *cache, "--quiet"])
    a = json.loads((tmp_path / "r" / "report.json").read_text())
    b = json.loads((out / "test_report" / "report.json").read_text())
    assert a["n"] == b["n"] and a["macro_f1"] == pytest.approx(b["macro_f1"])


def test_bad_model_dir_is_a_clean_error(data, tmp_path):
    from trafficsnn.cli import main

    with pytest.raises(SystemExit) as e:
        main(["evaluate", str(tmp_path), str(data), "--out", str(tmp_path / "r")])
    assert e.value.code == 2


def test_iscx_layout_reports_paper_subtasks(data, tmp_path):
    import shutil

    root = tmp_path / "iscx"
    names = {"Chat": ("NonVPN-PCAPs/skype_chat{}a.pcap", "VPN-PCAPS/vpn_icq_chat{}a.pcap"),
             "VoIP": ("NonVPN-PCAPs/voipbuster{}b.pcapng", "Tor/VOIP_Skype_Voice_Gateway{}.pcap"),
             "Video": ("NonVPN-PCAPs/youtube{}.pcap", "VPN-PCAPS/vpn_vimeo_{}.pcap")}
    for cls, pats in names.items():
        for i, src in enumerate(sorted((data / cls).glob("*.pcap"))):
            dst = root / pats[i % 2].format(i)
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src, dst)
    cache = ["--cache-dir", str(tmp_path / "cache")]
    _run(["train", str(root), "--out", str(tmp_path / "m"), "--model", "gbt", "--fractions", "0.5", "0.0", "0.5",
          *cache, "--quiet"])
    spec = json.loads((tmp_path / "m" / "model.json").read_text())
    assert len(spec["classes"]) == 14 and spec["classes"][0] == "Video_nonVPN"
    _run(["evaluate", str(tmp_path / "m"), str(root), "--out", str(tmp_path / "r"), *cache, "--quiet"])
    rep = json.loads((tmp_path / "r" / "report.json").read_text())
    ps = rep["paper_subtasks"]
    assert set(ps["per_encryption"]) == {"nonVPN", "Tor", "VPN"}
    assert ps["encryption"]["n"] == rep["n"]
    assert "Paper sub-tasks" in (tmp_path / "r" / "report.md").read_text()
