"""Whether this Python has the package a protocol check needs
(conf.model.PACKAGES): the one lookup, for conf.load's diagnostics (-n, the
start, a reload) and checks.registry's refusal to build the check. It
searches sys.path (importlib.util.find_spec) and imports nothing: no code
of the library runs."""

from __future__ import annotations

import importlib.util

from hoststated.conf.model import PACKAGES


def missing_package(kind: str) -> str | None:
    """The PyPI package `check <kind>` needs and this Python lacks, or None
    (none needed, or installed)."""
    entry = PACKAGES.get(kind)
    if entry is None:
        return None
    try:
        found = importlib.util.find_spec(entry[0]) is not None
    except (ImportError, ValueError):        # a parent package that is broken
        found = False
    return None if found else entry[1]
