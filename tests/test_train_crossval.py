"""Grouped cross-validation runs every model kind on the same folds and reports mean +- std."""
from __future__ import annotations

from trafficsnn.train.crossval import crossval, format_table
from trafficsnn.train.runner import TrainOptions, load_samples
from trafficsnn.train.synth import synthesize


def test_crossval_gbt_and_snn(tmp_path):
    data = tmp_path / "d"
    synthesize(data, classes=["Chat", "VoIP"], flows_per_class=4, captures_per_class=4, duration=(45, 46), seed=4,
               snaplen=96)
    opts = TrainOptions(preset="improved", quiet=True, device="cpu", cache_dir=str(tmp_path / "c"), epochs=1)
    ds = load_samples(data, opts)
    res = crossval(ds, opts, ["gbt", "snn"], k=2, seeds=[0, 1], log_path=tmp_path / "log.jsonl")
    for m in ("gbt", "snn"):
        r = res["models"][m]
        assert len(r["seed_macro_f1"]) == 2 and len(r["fold_macro_f1"]) == 4
        assert 0.0 <= r["macro_f1_mean"] <= 1.0 and r["macro_f1_std"] >= 0.0
    assert len((tmp_path / "log.jsonl").read_text().splitlines()) == 8
    assert "| gbt | all |" in format_table([res])


def test_crossval_cli_experiment_options(tmp_path, capsys):
    """--recipe / --model-json / --steps / --lr reach the SNN (class weights + plain shuffling here)."""
    import json

    from trafficsnn.train.crossval import main

    data = tmp_path / "d"
    synthesize(data, classes=["Chat", "VoIP"], flows_per_class=4, captures_per_class=4, duration=(45, 46), seed=4,
               snaplen=96)
    out = tmp_path / "cv.json"
    main([str(data), "--models", "snn", "--k", "2", "--seeds", "0", "--epochs", "1", "--steps", "50",
          "--lr", "3e-4", "--cache-dir", str(tmp_path / "c"), "--no-augment", "--out", str(out),
          "--recipe", '{"sampler": "shuffle", "class_weight": "balanced"}', "--model-json", '{"beta_init": 0.9}'])
    res = json.loads(out.read_text())[0]
    assert len(res["models"]["snn"]["fold_macro_f1"]) == 2
    assert "| snn | all |" in capsys.readouterr().out
