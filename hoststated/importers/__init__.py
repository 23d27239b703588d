"""Importers: an ldirectord.cf, a keepalived.conf or an ALOHA LVS
configuration as the equivalent hoststated.conf (issue 14).

Each importer is sans-IO: `convert(text, filename) -> Imported`, the text
of a hoststated.conf and the notes about what had no equivalent, each a
comment in the output naming the original line (`# file:line: ...`).
Input that cannot be read at all (binary, a block that never closes, a line
that is no statement of the format) raises ImportFailed with the place,
which the CLI prints as `file:line: message` (exit 1). The shared model and
printer are in common.py; the formats in ldirectord.py, keepalived.py and
aloha.py."""

from __future__ import annotations

from hoststated.importers import aloha, keepalived, ldirectord
from hoststated.importers.common import FORMATS, Imported, ImportFailed, decode

__all__ = ["FORMATS", "Imported", "ImportFailed", "convert"]

_MODULES = {"ldirectord": ldirectord, "keepalived": keepalived, "aloha": aloha}


def convert(fmt: str, data: bytes | str, file: str) -> Imported:
    """Import `data` (the file's bytes, or its text) in format `fmt`."""
    if fmt not in _MODULES:
        raise ValueError(f"unknown format {fmt!r}")
    return _MODULES[fmt].convert(decode(data, file), file)
