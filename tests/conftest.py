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


@pytest.fixture(params=["numpy", "c"])
def both_kernels(request, monkeypatch):
    """Run a test on the numpy paths and on the C kernels of the packets-to-flows engine
    (``TRAFFICSNN_FLOWS_KERNEL``); the C run skips where no compiler can build them."""
    from trafficsnn.flows import table_kernel
    from trafficsnn.packets import kernel

    if request.param == "c" and (table_kernel.library() is None or kernel.KERNEL.get() is None):
        pytest.skip("no C compiler: the flow engine's C kernels cannot be built")
    monkeypatch.setenv("TRAFFICSNN_FLOWS_KERNEL", request.param)
    return request.param
