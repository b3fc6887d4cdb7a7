"""``trafficsnn keys``: make CURVE key pairs (thin wrapper over trafficsnn.serve.security)."""
from __future__ import annotations

import click


@click.command("keys")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--name", "names", multiple=True, default=("server", "client"), show_default=True,
              help="Key pair to make (repeat for several). Writes NAME.key (public) and NAME.key_secret (0600).")
def command(directory: str, names: tuple[str, ...]) -> None:
    """Make CURVE key pairs in DIRECTORY for encrypted, authenticated ZeroMQ links.

    \b
    The classifier uses the server pair and admits only clients whose NAME.key
    files sit in its authorized directory:
      trafficsnn keys /etc/trafficsnn/keys --name server --name sensor1
      mkdir /etc/trafficsnn/keys/authorized && cp /etc/trafficsnn/keys/sensor1.key /etc/trafficsnn/keys/authorized/
      trafficsnn classify --bind tcp://0.0.0.0:5555 --curve-secret keys/server.key_secret --curve-clients keys/authorized
      trafficsnn capture -i eth0 --connect tcp://classifier:5555 --curve-secret keys/sensor1.key_secret --curve-server keys/server.key
    """
    from ..serve.security import make_keys

    for name in names:
        public, secret = make_keys(directory, name)
        click.echo(f"{name}: public {public}  secret {secret}")
