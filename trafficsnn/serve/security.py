"""CURVE encryption and client authentication for ZeroMQ links that leave the host.

Key files are ZeroMQ's own certificate format (``zmq.auth``): ``NAME.key``
holds the public key, ``NAME.key_secret`` both keys. The classifier (server)
loads its secret file and accepts only clients whose public key files are in
an authorized directory (checked by a ``ThreadAuthenticator``). Never imports torch.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from ..errors import ConfigError


def make_keys(directory: str | Path, name: str) -> tuple[Path, Path]:
    """Create ``NAME.key`` (public) and ``NAME.key_secret`` (private, mode 0600) in ``directory``."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    if not name or "/" in name or name.startswith("."):
        raise ConfigError(f"bad key name {name!r}: use a plain file name such as 'server' or 'sensor1'")
    pub, sec = d / f"{name}.key", d / f"{name}.key_secret"
    if pub.exists() or sec.exists():
        raise ConfigError(f"{pub} or {sec} already exists; remove it or choose another name")
    public, secret = zmq.auth.create_certificates(str(d), name)
    os.chmod(secret, 0o600)
    return Path(public), Path(secret)


def _load(path: str | Path, want_secret: bool) -> tuple[bytes, bytes | None]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"CURVE key file {p} does not exist (make one with `trafficsnn keys DIR --name NAME`)")
    try:
        public, secret = zmq.auth.load_certificate(str(p))
    except (ValueError, OSError) as err:
        raise ConfigError(f"{p} is not a ZeroMQ certificate file: {err}") from err
    if want_secret and not secret:
        raise ConfigError(f"{p} holds no secret key; pass the NAME.key_secret file")
    return public, secret


def _require_curve() -> None:
    if not zmq.has("curve"):
        raise ConfigError("this libzmq was built without CURVE support; install a pyzmq wheel with libsodium")


def secure_server(ctx: zmq.Context, sock: zmq.Socket, secret_file: str | Path,
                  clients_dir: str | Path) -> ThreadAuthenticator:
    """Make ``sock`` a CURVE server that admits only keys found in ``clients_dir``; call before bind."""
    _require_curve()
    public, secret = _load(secret_file, want_secret=True)
    cdir = Path(clients_dir)
    if not cdir.is_dir():
        raise ConfigError(f"authorized client key directory {cdir} does not exist")
    auth = ThreadAuthenticator(ctx)
    auth.start()
    auth.configure_curve(domain="*", location=str(cdir))
    sock.curve_secretkey = secret
    sock.curve_publickey = public
    sock.curve_server = True
    return auth


def secure_client(sock: zmq.Socket, secret_file: str | Path, server_public_file: str | Path) -> None:
    """Make ``sock`` a CURVE client with its own key pair that trusts the server's public key; call before connect."""
    _require_curve()
    public, secret = _load(secret_file, want_secret=True)
    server_public, _ = _load(server_public_file, want_secret=False)
    sock.curve_secretkey = secret
    sock.curve_publickey = public
    sock.curve_serverkey = server_public


def stop_auth(auth: Any) -> None:
    if auth is not None:
        try:
            auth.stop()
        except Exception:  # noqa: BLE001 - best effort at shutdown
            pass
