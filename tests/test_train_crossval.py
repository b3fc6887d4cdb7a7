"""Grouped cross-validation runs every model kind on the same folds and reports mean +- std."""
from __future__ import annotations

import json

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


def test_crossval_baselines_on_prefixes_use_the_same_folds(tmp_path):
    """Prefix runs of the scikit-learn baselines, tuned on the validation side, on the whole-flow folds."""
    import pytest

    data = tmp_path / "d"
    synthesize(data, classes=["Chat", "VoIP"], flows_per_class=4, captures_per_class=4, duration=(45, 46), seed=4,
               snaplen=96)
    opts = TrainOptions(preset="improved", quiet=True, device="cpu", cache_dir=str(tmp_path / "c"))
    ds = load_samples(data, opts)
    full = crossval(ds, opts, ["rf", "knn1"], k=2, seeds=[0], log_path=tmp_path / "a.jsonl")
    pre = crossval(ds, opts, ["rf", "knn", "knn1"], k=2, seeds=[0], prefix=3, tune=True,
                   params={"rf": {"n_estimators": 20}}, log_path=tmp_path / "b.jsonl")
    assert pre["prefix"] == 3 and "| knn1 | 3 |" in format_table([pre])
    assert len(pre["models"]["knn"]["chosen_params"]) == 2
    n_a = [json.loads(x)["n_test"] for x in (tmp_path / "a.jsonl").read_text().splitlines()][::2]
    n_b = [json.loads(x)["n_test"] for x in (tmp_path / "b.jsonl").read_text().splitlines()][::3]
    assert n_a == n_b and len(n_a) == 2                            # the same test folds
    with pytest.raises(ValueError, match="max_packets"):
        crossval(ds, opts, ["snn"], k=2, seeds=[0], prefix=3)
    assert full["prefix"] is None
