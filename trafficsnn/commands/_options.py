"""Click options shared by commands, declared once so their names, defaults and help agree."""
from __future__ import annotations

from typing import Callable

import click

MAX_FLOWS_HELP = "Cap on live flows; the least recently seen are evicted beyond it (0 = no cap)."


def flow_table_options(max_flows_help: str = MAX_FLOWS_HELP) -> Callable:
    """--idle-timeout, --active-timeout and --max-flows: the FlowTable limits (0 = never / no cap)."""
    options = (
        click.option("--idle-timeout", type=click.FloatRange(min=0), default=120.0, show_default=True,
                     help="End a flow after this many seconds without a packet (0 = never)."),
        click.option("--active-timeout", type=click.FloatRange(min=0), default=1800.0, show_default=True,
                     help="Cut a flow this many seconds after its first packet (0 = never)."),
        click.option("--max-flows", type=click.IntRange(min=0), default=1_000_000, show_default=True, help=max_flows_help),
    )

    def decorate(f: Callable) -> Callable:
        for option in reversed(options):   # click lists options in decoration order, top first
            f = option(f)
        return f

    return decorate


def echo_damaged(damaged: dict, where: str) -> None:
    """One WARNING line per cut or unreadable capture (train / evaluate), and where they are recorded."""
    if not damaged:
        return
    click.secho(f"WARNING: {len(damaged)} capture(s) damaged or unreadable (recorded in {where}):", fg="yellow",
                err=True)
    for name, d in sorted(damaged.items()):
        used = f"{d.get('flows', 0)} flows before the damage used" if d.get("flows") else "unreadable, nothing used"
        click.echo(f"  {name}: {d.get('error', '?')} ({used})", err=True)
