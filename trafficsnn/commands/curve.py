"""`trafficsnn curve`: early-classification curve of the SNN and the baselines by grouped cross-validation."""
from __future__ import annotations

import click

from ..snn.presets import DEFAULT_PRESET, PRESETS


@click.command(name="curve", help="""Macro-F1 against packets seen, for the SNN and baselines, on identical folds.

Grouped k-fold cross-validation by capture (session groups kept together), repeated over
--seeds (each seed deals the folds anew). The SNN is trained once per fold and asked for
its anytime verdict after 1, 2, 3, 5, ... packets; each baseline is re-fitted per prefix on
features of the first packets only. Also measures the expected calibration error after
temperature scaling and the open-set 'unknown' rule, from the out-of-fold predictions.

\b
Writes into OUT: curve.json (every number, per seed), curve.md (the table), curve.png.
Needs the packet-clocked preset (the default) for the SNN.
""")
@click.argument("data", type=click.Path(exists=True))
@click.option("--out", "-o", required=True, type=click.Path(file_okay=False), help="Output directory.")
@click.option("--labels", "labels_csv", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Label CSV naming flows by capture file and 5-tuple (nDPI task.csv).")
@click.option("--session-group", "session_groups", multiple=True, default=("ndpi",), show_default=True,
              help="Captures that are cuts of one session (comma-separated globs, repeatable; 'ndpi' = the "
                   "nDPI README's groups).")
@click.option("--preset", type=click.Choice(list(PRESETS)), default=DEFAULT_PRESET, show_default=True)
@click.option("--models", default="snn,gbt,rf,knn", show_default=True,
              help="Comma-separated: snn and any of gbt, rf, knn, knn1.")
@click.option("--folds", "k", type=click.IntRange(2), default=5, show_default=True)
@click.option("--seeds", default="0,1,2,3,4", show_default=True, help="Comma-separated seeds.")
@click.option("--prefixes", default="1,2,3,5,10,20,30,50,all", show_default=True,
              help="Packets seen, comma-separated ('all' = the whole sample).")
@click.option("--cache-dir", type=click.Path(file_okay=False), default=None)
@click.option("--quiet", "-q", is_flag=True)
def command(data, out, labels_csv, session_groups, preset, models, k, seeds, prefixes, cache_dir, quiet):
    import json
    from pathlib import Path

    from ..errors import ConfigError
    from ..train.curve import early_curve, format_curve, plot_curve
    from ..train.runner import TrainOptions, expand_session_groups, load_samples

    try:
        seed_list = [int(s) for s in seeds.split(",") if s.strip()]
        pfx = [None if p.strip() == "all" else int(p) for p in prefixes.split(",") if p.strip()]
    except ValueError:
        raise click.BadParameter("seeds and prefixes are comma-separated integers ('all' for the whole sample)")
    if any(p is not None and p < 1 for p in pfx):
        raise click.BadParameter("prefixes must be >= 1 packet", param_hint="--prefixes")
    names = [m.strip() for m in models.split(",") if m.strip()]
    known = {"snn", "gbt", "rf", "knn", "knn1"}
    if not names or set(names) - known:
        raise click.BadParameter(f"choose among {', '.join(sorted(known))}", param_hint="--models")
    opts = TrainOptions(preset=preset, labels_csv=labels_csv, session_groups=expand_session_groups(session_groups),
                        cache_dir=cache_dir, quiet=True, device="cpu")
    ds = load_samples(data, opts)
    if "snn" in names and ds.encoding.get("kind") != "packet":
        raise ConfigError(f"the curve asks the SNN for verdicts after k packets: preset {preset!r} is not "
                          "packet-clocked (use --preset packet, or leave snn out of --models)")
    o = Path(out)
    o.mkdir(parents=True, exist_ok=True)
    res = early_curve(ds, opts, names, k, seed_list, pfx, log_path=o / "curve.log.jsonl", progress=not quiet)
    (o / "curve.json").write_text(json.dumps(res, indent=1, default=float))
    table = format_curve(res)
    (o / "curve.md").write_text(table + "\n")
    plot_curve(res, o / "curve.png")
    if not quiet:
        click.echo(table)
        click.echo(f"wrote {o / 'curve.json'}, {o / 'curve.md'}, {o / 'curve.png'}")
