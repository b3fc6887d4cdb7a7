"""`trafficsnn evaluate`: metrics, confusion matrix and calibration of a model on labelled data."""
from __future__ import annotations

import click


@click.command(name="evaluate")
@click.argument("model", type=click.Path(exists=True))
@click.argument("data", type=click.Path(exists=True))
@click.option("--out", "-o", required=True, type=click.Path(file_okay=False), help="Report directory.")
@click.option("--labels", "labels_csv", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Label CSV naming flows by capture file and 5-tuple.")
@click.option("--rules", type=click.Path(exists=True, dir_okay=False), default=None,
              help="File-name label rules (TOML).")
@click.option("--task", type=click.Choice(["all", "encryption", "application"]), default="all", show_default=True)
@click.option("--manifest", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Evaluate only one side of a split.json written by `train` (see --side).")
@click.option("--side", type=click.Choice(["train", "val", "test"]), default="test", show_default=True)
@click.option("--max-packets", type=click.IntRange(1), default=None,
              help="First N packets of each flow only (default: what the model was trained with).")
@click.option("--min-packets", type=click.IntRange(1), default=10, show_default=True)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--cache-dir", type=click.Path(file_okay=False), default=None)
@click.option("--jobs", "-j", type=click.IntRange(0), default=0, show_default=True,
              help="Worker processes extracting samples from captures not yet cached; 0 = one per core "
                   "when over 256 MB of captures are to be extracted, else in this process.")
@click.option("--no-cache", is_flag=True)
@click.option("-q", "--quiet", is_flag=True, help="Only the summary line.")
def command(model, data, out, labels_csv, rules, task, manifest, side, max_packets, min_packets, device, cache_dir,
            jobs, no_cache, quiet):
    """Evaluate MODEL (a directory written by `trafficsnn train`) on the captures in DATA.

    \b
    Writes into OUT: report.json and report.md (accuracy, balanced accuracy, macro-F1,
    per-class precision/recall/F1, cap20 macro-F1 when the label CSV has that column, the
    paper's per-encryption sub-tasks for the 14 ISCX classes, expected calibration error
    before/after the model's temperature), confusion.json and confusion.png. The confusion
    matrix is C[true, pred]: rows are true classes, columns predicted classes.
    """
    from ..train.runner import TrainOptions, evaluate_run

    opts = TrainOptions(labels_csv=labels_csv, rules=rules, task=task, manifest=manifest, max_packets=max_packets,
                        min_packets=min_packets, device=device, cache_dir=cache_dir, no_cache=no_cache, quiet=quiet,
                        jobs=jobs)
    rep = evaluate_run(model, data, out, opts, side)
    from ._options import echo_damaged

    echo_damaged(rep.get("damaged_captures", {}), f"{out}/report.json")
    if not quiet:
        line = (f"{rep['n']} samples: accuracy {rep['accuracy']:.4f}, balanced accuracy "
                f"{rep['balanced_accuracy']:.4f}, macro-F1 {rep['macro_f1']:.4f}")
        if "cap20" in rep:
            line += f", macro-F1 cap20 {rep['cap20']['macro_f1']:.4f}"
        click.echo(line)
        click.echo(f"report: {out}/report.md")
