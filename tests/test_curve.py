"""`trafficsnn curve` end to end on tiny synthetic data: every model, every prefix, the files."""
from __future__ import annotations

import json

from click.testing import CliRunner

from trafficsnn.cli import cli


def test_curve_command_writes_table_json_and_png(tmp_path):
    data = tmp_path / "data"
    r = CliRunner().invoke(cli, ["synth", str(data), "--flows-per-class", "3", "--captures-per-class", "4",
                                 "--duration", "20", "25", "--snaplen", "96", "--seed", "2", "--quiet"])
    assert r.exit_code == 0, r.output
    out = tmp_path / "out"
    r = CliRunner().invoke(cli, ["curve", str(data), "--out", str(out), "--models", "snn,rf", "--folds", "2", "--session-group", "none*",
                                 "--seeds", "0", "--prefixes", "1,3,all", "--cache-dir", str(tmp_path / "c"), "-q"])
    assert r.exit_code == 0, r.output
    res = json.loads((out / "curve.json").read_text())
    assert res["prefixes"] == ["1", "3", "all"]
    for m in ("snn", "rf"):
        f1 = res["models"][m]["macro_f1_mean"]
        assert set(f1) == {"1", "3", "all"} and all(0.0 <= v <= 1.0 for v in f1.values())
        assert 0.0 <= res["models"][m]["ece_mean"] <= 1.0
    assert "paired_snn_minus" in res and (out / "curve.png").stat().st_size > 1000
    assert "| snn |" in (out / "curve.md").read_text()


def test_curve_refuses_bad_options(tmp_path):
    r = CliRunner().invoke(cli, ["curve", str(tmp_path), "--out", str(tmp_path / "o"), "--models", "snn,xgb"])
    assert r.exit_code == 2 and "choose among" in r.output
