"""The shipped unit files pass `systemd-analyze verify` and carry the hardening they promise."""
from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

SYSTEMD = Path(__file__).resolve().parent.parent / "systemd"
UNITS = ("trafficsnn-capture.service", "trafficsnn-classify.service")


def _unit(name: str) -> dict[str, list[str]]:
    """Section.key -> all values (unit files allow repeated keys)."""
    out: dict[str, list[str]] = {}
    section = ""
    for line in (SYSTEMD / name).read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        k, _, v = line.partition("=")
        out.setdefault(f"{section}.{k}", []).append(v)
    return out


@pytest.mark.parametrize("name", UNITS)
def test_unit_hardening(name):
    u = _unit(name)
    for key, value in [("Service.Type", "notify"), ("Service.Restart", "on-failure"),
                       ("Service.DynamicUser", "yes"), ("Service.NoNewPrivileges", "yes"),
                       ("Service.ProtectSystem", "strict"), ("Service.PrivateTmp", "yes"),
                       ("Service.ProtectHome", "yes")]:
        assert u.get(key) == [value], key
    assert "Service.WatchdogSec" in u and "Service.RestrictAddressFamilies" in u and "Service.SystemCallFilter" in u
    caps = " ".join(u["Service.AmbientCapabilities"])
    if "capture" in name:
        assert caps == "CAP_NET_RAW" and u["Service.CapabilityBoundingSet"] == ["CAP_NET_RAW"]
        assert "AF_PACKET" in u["Service.RestrictAddressFamilies"][0]
    else:
        assert caps == "" and u["Service.CapabilityBoundingSet"] == [""]
    assert "--config /etc/trafficsnn/trafficsnn.toml" in u["Service.ExecStart"][0]


def test_example_config_is_valid_toml_with_both_sections():
    cfg = tomllib.loads((SYSTEMD / "trafficsnn.toml").read_text())
    assert {"capture", "classify"} <= set(cfg)
    assert cfg["capture"]["connect"] == cfg["classify"]["bind"]


def test_systemd_analyze_verify(tmp_path):
    exe = shutil.which("systemd-analyze")
    if exe is None:
        pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    trafficsnn = Path(sys.executable).with_name("trafficsnn")
    if not trafficsnn.exists():
        pytest.skip(f"the trafficsnn entry point is not installed next to {sys.executable}")
    for name in UNITS:
        text = (SYSTEMD / name).read_text().replace("/opt/trafficsnn/bin/trafficsnn", str(trafficsnn))
        (tmp_path / name).write_text(text)
    proc = subprocess.run([exe, "verify", "--man=no", *(str(tmp_path / n) for n in UNITS)],
                          capture_output=True, text=True, timeout=60)
    if proc.returncode != 0 and ("Failed to connect" in proc.stderr or "System has not been booted" in proc.stderr):
        pytest.skip(f"systemd-analyze unusable in this container: {proc.stderr.strip()[:200]}")
    assert proc.returncode == 0, proc.stderr
    assert "trafficsnn-" not in proc.stderr, proc.stderr  # no warnings about our units
