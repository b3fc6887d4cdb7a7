"""``--config FILE``: TOML defaults for a command's options (command-line values win).

Both daemons read the same file, each its own table (``[capture]``,
``[classify]``). Keys are long option names, with dashes or underscores.
Never imports torch.
"""
from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import click

from ..errors import ConfigError


def load_section(path: str | Path, section: str, known: set[str] | dict[str, str]) -> dict[str, Any]:
    """``[section]`` of a TOML file with keys mapped to parameter names (``known``: key -> name)."""
    if not isinstance(known, dict):
        known = {k: k for k in known}
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise ConfigError(f"config file {p} does not exist") from err
    except OSError as err:
        raise ConfigError(f"cannot read config file {p}: {err.strerror or err} (check its permissions)") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"{p} is not valid TOML: {err}") from err
    table = data.get(section, {})
    if not isinstance(table, dict):
        raise ConfigError(f"{p}: [{section}] must be a table")
    out: dict[str, Any] = {}
    for k, v in table.items():
        name = k.replace("-", "_")
        if name not in known:
            raise ConfigError(f"{p}: unknown key {k!r} in [{section}]; known: {', '.join(sorted(known))}")
        out[known[name]] = v
    return out


def config_option(section: str):
    """A ``--config`` click option that fills the command's defaults from ``[section]`` of a TOML file."""

    def callback(ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
        if value:
            known: dict[str, str] = {}
            for p in ctx.command.params:
                if p.name and p.name != "config":
                    known[p.name] = p.name
                    for opt in p.opts:
                        if opt.startswith("--"):
                            known[opt[2:].replace("-", "_")] = p.name
            try:
                values = load_section(value, section, known)
            except ConfigError as err:
                raise click.BadParameter(str(err)) from err
            # Options declared multiple=True take lists.
            for p in ctx.command.params:
                if p.name in values and getattr(p, "multiple", False) and isinstance(values[p.name], (str, int, float)):
                    values[p.name] = [values[p.name]]
            ctx.default_map = {**(ctx.default_map or {}), **values}
        return value

    return click.option("--config", type=click.Path(dir_okay=False), is_eager=True, expose_value=False,
                        callback=callback, help=f"TOML file; its [{section}] table sets defaults for these options.")
