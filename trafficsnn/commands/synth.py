"""`trafficsnn synth`: write synthetic ISCX-like labelled pcap files."""
from __future__ import annotations

import click

from ..train.synth import CLASSES


@click.command(name="synth")
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--classes", default=",".join(CLASSES), show_default=True,
              help="Comma-separated classes to generate.")
@click.option("--flows-per-class", type=click.IntRange(1), default=12, show_default=True,
              help="Bidirectional flows per class (spread over the captures of the class).")
@click.option("--captures-per-class", type=click.IntRange(1), default=3, show_default=True,
              help="Capture files per class (the unit of grouped splits).")
@click.option("--duration", nargs=2, type=float, default=(60.0, 100.0), show_default=True,
              help="Flow duration range in seconds (min max).")
@click.option("--ipv6-fraction", type=click.FloatRange(0, 1), default=0.25, show_default=True)
@click.option("--snaplen", type=click.IntRange(0), default=0, show_default=True,
              help="Store at most this many bytes per frame (0 = whole frames); lengths stay real.")
@click.option("--seed", type=int, default=0, show_default=True, help="Same seed, same bytes.")
@click.option("-q", "--quiet", is_flag=True, help="Print nothing.")
def command(out, classes, flows_per_class, captures_per_class, duration, ipv6_fraction, snaplen, seed, quiet):
    """Write OUT/<Class>/<class>_<i>.pcap with class-typical size and timing patterns
    (VoIP, Video, Chat, FileTransfer, Browsing) plus OUT/synth.json with the ground truth.

    The folder can be given straight to `trafficsnn train` (class = subfolder).
    """
    from ..train.synth import synthesize

    names = [c.strip() for c in classes.split(",") if c.strip()]
    m = synthesize(out, names, flows_per_class, captures_per_class, tuple(duration), ipv6_fraction, seed, snaplen)
    if not quiet:
        n = sum(c["packets"] for c in m["captures"])
        click.echo(f"wrote {len(m['captures'])} captures, {sum(c['flows'] for c in m['captures'])} flows, "
                   f"{n} packets to {out}")
