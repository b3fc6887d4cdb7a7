"""`trafficsnn train`: fit an SNN (or a baseline) on labelled captures."""
from __future__ import annotations

import click

from ..snn.presets import DEFAULT_PRESET, PRESETS   # names only: no torch at import time
from ..train.baselines import BASELINES   # numpy only: the name list of the scikit-learn baselines

_HELP_DATA = """DATA is a folder of captures. Labels come from, in this order: --labels CSV
(flows named by capture file + 5-tuple, nDPI task.csv columns), --rules TOML or an ISCX
layout (NonVPN-PCAPs/, VPN-PCAPS/, Tor/, NonTor/ folders: labels from file names), or else
the first sub-folder of each capture (class = sub-folder, as `trafficsnn synth` writes)."""


@click.command(name="train", help=f"""Train a model on labelled captures and write it to --out.

{_HELP_DATA}

\b
Writes into OUT: model.safetensors + model.json (the checkpoint `classify`/`replay`
load), split.json (sample -> flow -> capture -> split), train_log.jsonl and curves.png,
state/ (resumable), test_report/ (report.json, report.md, confusion.png), summary.json.
""")
@click.argument("data", type=click.Path(exists=True))
@click.option("--out", "-o", required=True, type=click.Path(file_okay=False), help="Output model directory.")
@click.option("--preset", type=click.Choice(list(PRESETS)), default=DEFAULT_PRESET, show_default=True,
              help="Input encoding + network + recipe: packet = packet-clocked events into a recurrent "
                   "adaptive-LIF SNN (default), improved = 200 ms histogram steps into the paper's network "
                   "with its flaws fixed, paper = the reference paper exactly.")
@click.option("--model", "model_kind", type=click.Choice(["snn", "mlp", *BASELINES]), default="snn",
              show_default=True,
              help="snn, or a baseline on the same samples: mlp (same input), gbt / rf (gradient boosting / "
                   "random forest on flow statistics), knn / knn1 (k-NN / 1-NN on the first 10 packets).")
@click.option("--epochs", type=click.IntRange(1), default=None, help="Epochs (default: the preset's).")
@click.option("--batch-size", type=click.IntRange(1), default=None,
              help="Batch size (default: the preset's; improved: 32, paper: 128).")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Learning rate, > 0 (default: the preset's).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seeds the split, sampler and weights.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--split", type=click.Choice(["grouped", "paper"]), default="grouped", show_default=True,
              help="grouped: by capture (and session group), stratified; paper: random window-level "
                   "65/15/20 (leaks, for comparison only).")
@click.option("--fractions", nargs=3, type=float, default=(0.6, 0.2, 0.2), show_default=True,
              help="Grouped split: train, validation, test shares.")
@click.option("--session-group", "session_groups", multiple=True,
              help="Captures that are cuts of one session, kept on one side: comma-separated globs "
                   "(repeatable); 'ndpi' = the nDPI README's groups.")
@click.option("--manifest", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Reuse the capture sides of a saved split.json.")
@click.option("--labels", "labels_csv", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Label CSV naming flows by capture file and 5-tuple.")
@click.option("--rules", type=click.Path(exists=True, dir_okay=False), default=None,
              help="File-name label rules (TOML); default: the packaged ISCX rules when DATA looks like ISCX.")
@click.option("--task", type=click.Choice(["all", "encryption", "application"]), default="all", show_default=True,
              help="ISCX rules: 14 classes, 3 encryption types or 5 applications.")
@click.option("--max-packets", type=click.IntRange(1), default=None,
              help="Use only the first N packets of each flow (early classification).")
@click.option("--min-packets", type=click.IntRange(1), default=10, show_default=True,
              help="Folder/ISCX sources: skip flows with fewer packets (class-agnostic).")
@click.option("--bin-s", type=click.FloatRange(min=1e-4), default=None,
              help="Improved preset: seconds per time step (default 0.2).")
@click.option("--steps", "n_steps", type=click.IntRange(1), default=None,
              help="Time steps per sample: packet preset = packets per flow (default 64); improved "
                   "preset = time bins (default 300; window = steps x bin).")
@click.option("--input-value", type=click.Choice(["count", "log1p"]), default=None,
              help="Improved preset: packet counts per (step, size bin) as they are or log1p "
                   "(default: the preset's; improved: log1p).")
@click.option("--augment/--no-augment", default=None,
              help="Train on random flow prefixes and thinned packet counts (default: the preset's; "
                   "improved: on, paper: off).")
@click.option("--weight-decay", type=click.FloatRange(min=0), default=None,
              help="Adam (coupled L2) weight decay (default: the preset's; improved: 1e-3).")
@click.option("--label-smoothing", type=click.FloatRange(0, 1), default=None,
              help="Cross-entropy label smoothing (default: the preset's; improved: 0.1, paper: 0).")
@click.option("--balance", type=click.Choice(["loss", "sampler"]), default=None,
              help="How classes are balanced: loss = every sample once per epoch, class-weighted "
                   "cross-entropy (improved's default); sampler = class-balanced sampling with "
                   "replacement, unweighted loss (paper's default).")
@click.option("--min-batches", type=click.IntRange(1), default=None,
              help="At least this many optimiser steps per epoch (small data sets; the paper uses one "
                   "training-set's worth of samples).")
@click.option("--hidden", "n_hidden", type=click.IntRange(1), default=None,
              help="SNN hidden neurons (default: the preset's; improved: 200, paper: 100).")
@click.option("--resume", is_flag=True, help="Continue from OUT/state after an interruption.")
@click.option("--cache-dir", type=click.Path(file_okay=False), default=None,
              help="Sample cache (default $TRAFFICSNN_CACHE or ~/.cache/trafficsnn/samples).")
@click.option("--jobs", "-j", type=click.IntRange(0), default=0, show_default=True,
              help="Worker processes extracting samples from captures not yet cached; 0 = one per core "
                   "when over 256 MB of captures are to be extracted, else in this process.")
@click.option("--nproc", type=click.IntRange(1), default=1, show_default=True,
              help="Data-parallel training processes (torch.distributed: gloo on CPU, NCCL with one GPU "
                   "each): every process computes its share of each batch, gradients are summed: one process's training with "
                   "that batch size, up to float32 summation order. Samples are extracted once first (-j).")
@click.option("--no-cache", is_flag=True, help="Do not read or write the sample cache.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars or summary.")
def command(data, out, preset, model_kind, epochs, batch_size, lr, seed, device, split, fractions, session_groups,
            manifest, labels_csv, rules, task, max_packets, min_packets, bin_s, n_steps, input_value, augment,
            weight_decay,
            label_smoothing, balance, min_batches, n_hidden, resume, cache_dir, jobs, nproc, no_cache, quiet):
    import warnings

    from ..train.loop import recipe_overrides
    from ..train.runner import TrainOptions, expand_session_groups, train_run
    from ..train.splits import LeakySplitWarning

    opts = TrainOptions(preset=preset, model=model_kind, labels_csv=labels_csv, rules=rules, task=task,
                        split=split, fractions=tuple(fractions), session_groups=expand_session_groups(session_groups),
                        seed=seed, epochs=epochs, batch_size=batch_size, lr=lr, device=device,
                        max_packets=max_packets, min_packets=min_packets, resume=resume, cache_dir=cache_dir, jobs=jobs,
                        no_cache=no_cache, quiet=quiet, n_hidden=n_hidden, manifest=manifest, bin_s=bin_s,
                        n_steps=n_steps, input_value=input_value,
                        recipe=recipe_overrides(augment, weight_decay, label_smoothing, min_batches, balance))
    with warnings.catch_warnings(record=True) as caught:  # the leaky-split warning, printed in red below
        warnings.simplefilter("always", LeakySplitWarning)
        if nproc > 1:
            from ..train.distributed import launch

            summary = launch(data, out, opts, nproc)
        else:
            summary = train_run(data, out, opts)
    for w in caught:
        if issubclass(w.category, LeakySplitWarning):
            click.secho(f"WARNING: {w.message}", fg="red", err=True)
    from ._options import echo_damaged

    echo_damaged(summary.get("damaged_captures", {}), f"{out}/split.json")
    if not quiet:
        click.echo(_summary_line(summary))


def _summary_line(summary: dict) -> str:
    """One readable line for people; the full summary is in OUT/summary.json."""
    n = summary.get("samples", {})
    parts = [f"{summary.get('model_kind', 'snn')}/{summary.get('preset', '?')}",
             f"{len(summary.get('classes', []))} classes",
             "samples train/val/test " + "/".join(str(n.get(k, 0)) for k in ("train", "val", "test"))]
    test = summary.get("test") or {}
    if test:
        parts.append(f"test accuracy {test.get('accuracy', 0):.4f}, balanced accuracy "
                     f"{test.get('balanced_accuracy', 0):.4f}, macro-F1 {test.get('macro_f1', 0):.4f}")
    out = summary.get("model", "")
    return "; ".join(parts) + (f"\nmodel: {out}/ (report: {out}/test_report/report.md, summary: {out}/summary.json)"
                               if out else "")

