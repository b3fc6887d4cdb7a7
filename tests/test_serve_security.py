"""CURVE: a known client is admitted and encrypted; an unknown client is refused."""
from __future__ import annotations

import shutil

import pytest
import zmq

from trafficsnn.cli import main
from trafficsnn.errors import ConfigError
from trafficsnn.serve.security import secure_client, secure_server, stop_auth

pytestmark = pytest.mark.skipif(not zmq.has("curve"), reason="libzmq without CURVE")


def test_keys_command_and_unknown_client_refused(tmp_path):
    keys = tmp_path / "keys"
    main(["keys", str(keys), "--name", "server", "--name", "good", "--name", "evil"])
    assert (keys / "good.key").is_file() and (keys / "good.key_secret").stat().st_mode & 0o077 == 0
    authorized = tmp_path / "authorized"
    authorized.mkdir()
    shutil.copy(keys / "good.key", authorized / "good.key")

    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    auth = secure_server(ctx, pull, keys / "server.key_secret", authorized)
    port = pull.bind_to_random_port("tcp://127.0.0.1")
    socks = []
    try:
        for who in ("evil", "good"):
            push = ctx.socket(zmq.PUSH)
            push.linger = 0
            secure_client(push, keys / f"{who}.key_secret", keys / "server.key")
            push.connect(f"tcp://127.0.0.1:{port}")
            push.send(who.encode())
            socks.append(push)
        got = []
        while pull.poll(1500):
            got.append(pull.recv())
        assert got == [b"good"]
    finally:
        for s in socks:
            s.close(0)
        pull.close(0)
        stop_auth(auth)
        ctx.term()


def test_bad_key_files_are_config_errors(tmp_path):
    ctx = zmq.Context()
    s = ctx.socket(zmq.PUSH)
    try:
        with pytest.raises(ConfigError, match="does not exist"):
            secure_client(s, tmp_path / "nope.key_secret", tmp_path / "server.key")
        (tmp_path / "pub.key").write_text("garbage")
        with pytest.raises(ConfigError):
            secure_client(s, tmp_path / "pub.key", tmp_path / "pub.key")
    finally:
        s.close(0)
        ctx.term()
