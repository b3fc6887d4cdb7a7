"""CURVE encryption and client authentication for ZeroMQ links that leave the host.

Key files are ZeroMQ's own certificate format (``zmq.auth``): ``NAME.key``
holds the public key, ``NAME.key_secret`` both keys. The classifier (server)
loads its secret file and accepts only clients whose public key files are in
an authorized directory (checked by a ``ThreadAuthenticator`` that logs every
refused client: its key and address, at most once a minute per key). Never imports torch.
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils import z85

from ..errors import ConfigError

log = logging.getLogger(__name__)


class LoggingAuthenticator(ThreadAuthenticator):
    """A ``ThreadAuthenticator`` that logs refused clients (public key, address, reason) and counts them.

    A refused client retries, so one line per key is written at most every ``log_every_s``
    seconds; ``refused`` counts every ZAP refusal (the daemon's socket monitor counts all
    failed handshakes, these included)."""

    log_every_s = 60.0

    def __init__(self, ctx: zmq.Context):
        super().__init__(ctx)
        self.refused = 0
        self._last_logged: dict[str, float] = {}
        self._peer = ("?", "?")

    async def handle_zap_message(self, msg: list[bytes]) -> None:
        try:
            addr = msg[3].decode("utf-8", "replace") if len(msg) > 3 else "?"
            key = z85.encode(msg[6]).decode() if len(msg) > 6 and msg[5] == b"CURVE" \
                and len(msg[6]) == 32 else "?"
        except Exception:  # noqa: BLE001 - a malformed ZAP request is refused by the base class
            addr, key = "?", "?"
        self._peer = (addr, key)
        await super().handle_zap_message(msg)

    def _send_zap_reply(self, request_id: bytes, status_code: bytes, status_text: bytes,
                        user_id: str = "anonymous") -> None:
        if status_code != b"200":
            self.refused += 1
            addr, key = self._peer
            now = time.monotonic()
            if len(self._last_logged) > 4096:
                self._last_logged.clear()
            if now - self._last_logged.get(key, -1e18) >= self.log_every_s:
                self._last_logged[key] = now
                log.warning("refused CURVE client key %s from %s (%s): its public key file is not in the "
                            "--curve-clients directory (%d refusals so far)", key, addr,
                            status_text.decode("utf-8", "replace"), self.refused)
        super()._send_zap_reply(request_id, status_code, status_text, user_id)


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
    auth = LoggingAuthenticator(ctx)
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
