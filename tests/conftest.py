"""Shared fixtures: where the read-only shared data lives, and a skip when it is absent."""
from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"shared data not found at {SHARED}")
    return SHARED


@pytest.fixture(scope="session")
def ndpi_dev(shared_data: Path) -> Path:
    p = shared_data / "ndpi" / "developer"
    if not p.is_dir():
        pytest.skip(f"nDPI developer data not found at {p}")
    return p
