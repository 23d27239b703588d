"""hoststated: host status daemon for server load balancing on Linux."""

import os as _os
import sys as _sys

__version__ = "0.1.0"

# The Debian package's private copies of what Debian 12 has too old
# (pydantic 2, lark 1.3, cryptography 42: debian/README.Debian), ahead of the
# system's; only hoststated's processes see them. Absent anywhere else.
_VENDOR = _os.path.join(_os.path.dirname(__file__), "_vendor")
if _os.path.isdir(_VENDOR) and _VENDOR not in _sys.path:
    _sys.path.insert(0, _VENDOR)
