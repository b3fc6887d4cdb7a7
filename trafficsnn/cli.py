"""The ``trafficsnn`` command line: a thin click group.

Subcommands live in ``trafficsnn.commands.<name>`` and are imported only when
invoked, so ``trafficsnn capture`` starts fast and runs without torch installed.
"""
from __future__ import annotations

import importlib
import sys

import click

from . import __version__
from .errors import TrafficSNNError

# name -> (module under trafficsnn.commands, one-line help shown by --help)
COMMANDS: dict[str, tuple[str, str]] = {
    "extract": ("extract", "Turn captures into flows (columnar file or JSON lines)."),
    "synth": ("synth", "Write synthetic ISCX-like labelled pcap files."),
    "train": ("train", "Train an SNN (or a baseline) on labelled captures."),
    "evaluate": ("evaluate", "Evaluate a model on labelled captures: metrics and plots."),
    "curve": ("curve", "Early-classification curve (macro-F1 vs packets seen) by grouped cross-validation."),
    "capture": ("capture", "Capture agent: live interface or pcap -> flow updates over ZeroMQ."),
    "classify": ("classify", "Classifier daemon: flow updates over ZeroMQ -> verdicts."),
    "replay": ("replay", "Classify the flows of capture files (capture + classifier)."),
    "verdicts": ("verdicts", "Turn verdict JSON lines into a CSV or Parquet table."),
    "keys": ("keys", "Make CURVE key pairs for authenticated, encrypted links."),
    "export": ("export", "Write a trained SNN as a NIR graph (for other simulators and neuromorphic chips)."),
}


class LazyGroup(click.Group):
    """A click group that imports a subcommand's module only when it runs."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module_name, short_help = COMMANDS[name]
        try:
            module = importlib.import_module(f"trafficsnn.commands.{module_name}")
        except ImportError as err:
            missing = getattr(err, "name", None) or str(err)
            return _unavailable(name, short_help, f"needs a module that is not installed ({missing})")
        cmd = module.command
        cmd.short_help = cmd.short_help or short_help
        return cmd


def _unavailable(name: str, short_help: str, why: str) -> click.Command:
    @click.command(name=name, short_help=short_help, context_settings={"ignore_unknown_options": True})
    @click.argument("args", nargs=-1, type=click.UNPROCESSED)
    def cmd(args: tuple[str, ...]) -> None:
        raise click.ClickException(f"'trafficsnn {name}' is not available: {why}.")

    return cmd


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="trafficsnn")
def cli() -> None:
    """Classify encrypted network traffic from packet sizes, directions and timing
    with spiking neural networks.

    \b
    Typical use:
      trafficsnn extract capture.pcap -o flows.npz     # packets -> flows
      trafficsnn synth demo-data/                      # labelled synthetic pcaps
      trafficsnn train demo-data/ --out run/           # fit an SNN
      trafficsnn replay capture.pcap                   # classify a capture
      trafficsnn capture -i eth0 --connect ipc:///run/trafficsnn/updates   # sensor side
    """


def main(argv: list[str] | None = None) -> None:
    """Console entry point: user errors print one line, no traceback."""
    try:
        cli.main(args=argv, standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except click.ClickException as err:
        err.show()
        sys.exit(err.exit_code)
    except TrafficSNNError as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(getattr(err, "exit_code", 2))
    except BrokenPipeError:
        sys.exit(0)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
