"""``trafficsnn export``: write a trained SNN in a format other simulators and chips read (NIR)."""
from __future__ import annotations

import click


@click.command(name="export")
@click.argument("model", type=click.Path())
@click.option("--format", "fmt", type=click.Choice(["nir"]), default="nir", show_default=True,
              help="Output format: nir = Neuromorphic Intermediate Representation (HDF5, the `nir` package).")
@click.option("-o", "--out", required=True, type=click.Path(dir_okay=False), help="File to write, e.g. model.nir.")
@click.option("--dt", type=float, default=1e-4, show_default=True,
              help="Seconds per step the time constants are expressed for (forward Euler; 1e-4 is the step "
                   "snnTorch's NIR import uses).")
def command(model, fmt, out, dt):
    """Write MODEL (a directory written by `trafficsnn train`) as a NIR graph.

    \b
    Maps exactly for architecture 'lif' (presets paper and improved): input, Linear
    weights, the LIF hidden layer as a CubaLIF with a self-connection (its soft reset),
    Linear readout weights, the leaky readout (LI) and its bias (Affine). Class scores
    are the mean of the graph's output over the steps fed; the graph's metadata holds
    the classes, the encoding and the discretisation.
    Architecture 'alif' (preset packet, the shipped model) does not map: the command
    says which parts have no NIR primitive and exits with status 2.
      trafficsnn export run/ --format nir -o model.nir
    """
    from ..snn.checkpoint import load_checkpoint
    from ..snn.nir_export import export_nir

    loaded = load_checkpoint(model, device="cpu")
    graph = export_nir(loaded, out, dt)
    meta = graph.metadata
    click.echo(f"wrote {out}: NIR {meta['nir_version']} graph of {loaded.path} (preset {meta['preset']}, "
               f"architecture {meta['architecture']}): {meta['summary']}; dt {meta['dt']:g} s, forward Euler; "
               f"unmapped: {meta['unmapped']}")
