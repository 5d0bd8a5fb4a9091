"""Fixtures of the networking tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def procs(tmp_path: Path) -> Iterator:
    """The processes a test starts (see tests/net/cluster.py); all killed when the test ends."""
    from cluster import Procs

    logs = tmp_path / "proc-logs"
    logs.mkdir()
    p = Procs(logs)
    try:
        yield p
    finally:
        p.kill_all()
