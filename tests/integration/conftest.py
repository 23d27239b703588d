"""Shared fixtures for root integration tests (helpers live in tests/lab.py)."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))   # tests/lab.py

from lab import Lab  # noqa: E402


def root_ok() -> bool:
    return os.geteuid() == 0 and shutil.which("ip") is not None


@pytest.fixture
def lab(request):
    """A fresh Lab (namespaces, processes, temp dir) per test, torn down after."""
    if not root_ok():
        pytest.skip("needs root and iproute2")
    area = request.node.name.split("[")[0][-6:].replace("_", "")
    with Lab(area) as lab:
        yield lab
