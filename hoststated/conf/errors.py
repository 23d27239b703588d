"""Configuration errors: every problem found, each as `file:line:col: message`.

A file loaded through the control socket (`hoststatectl load FILE`) is read
as root and may be anything, /etc/shadow included: its diagnostics are told
with redact(), which keeps the place and the kind of error and drops every
word taken from the file (faults-found 3.6).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

# The words diagnostics are written in. redact() keeps these and nothing
# else; a message word missing here is only shown as "...", never leaked.
VOCAB = frozenset("""
    a above add address after agentx all allowed an and are argument as at backup be
    before below binary block body both by byte ca can cannot character characters check
    checked checks chmod cleanstop closed code configuration connections contain control
    create daemons data deep define defined denied device different digest digits direct
    directory dns does end engine error exist existing expected failed family file files
    filter first flag for forward forwarding from fwmark give given global got group has
    here hex holds host hosts if in include includes ingress input interface interval invalid
    ip is it its itself kernel key keyword keywords knows large last least leave letters
    line listen listener listeners lookup loop macro matches max method min missing mode
    more ms multiple must name needs nested netmask nftables no none not nothing number
    of on one only open options or other out over packet password path per port ports
    prefix preforked protocol proxy quote quoted quotes radius range read reading
    redirect redirection redirections regex regular relay relays retry route router
    routers routes routing rtable rule run script service services share socket sticky
    string strings subagent such superfluous supported syntax system table take takes
    tcp than the there this through timeout tls to together token tokens too towards
    twice two type udp undefined under unexpected unknown unterminated until use used
    user users uses utf valid value verify virtual want warning where which will with
    without yes yet
    File HTTP Is NUL No Permission TLS UTF
    """.split())
# punctuation kept between kept words; anything else is a placeholder
_PUNCT = frozenset(":;,()-")
_TOKEN = re.compile(r"'[^'\n]*'|\"[^\"\n]*\"|<[^>\n]*>|[A-Za-z]+|\s+|.", re.S)
HIDDEN = "..."


def redact(message: str) -> str:
    """The kind of error a message tells, without what the file said: every
    quoted text, name, number or symbol that is not one of VOCAB's words
    becomes "...", and neighbouring ones (with the punctuation between them)
    become one, so the result has no part of the input but its shape."""
    out: list[str] = []
    hidden = False               # the last kept token is a placeholder
    gap: list[str] = []          # spaces/punctuation since it
    for tok in _TOKEN.findall(message):
        if tok.isspace() or tok in _PUNCT:
            gap.append(tok)
            continue
        if tok in VOCAB:
            out += gap
            out.append(tok)
            hidden = False
        elif not hidden:
            out += gap
            out.append(HIDDEN)
            hidden = True
        gap = []
    text = "".join(out).strip()
    return text if text and text != HIDDEN else "error"


@dataclass(frozen=True)
class Diagnostic:
    file: str
    line: int
    col: int
    message: str
    warning: bool = False

    def __str__(self) -> str:
        kind = "warning: " if self.warning else ""
        if self.line <= 0:          # about the file as a whole: no place to name
            return f"{self.file}: {kind}{self.message}"
        return f"{self.file}:{self.line}:{self.col}: {kind}{self.message}"

    def redacted(self, top: str) -> "Diagnostic":
        """This diagnostic for a file loaded through the control socket
        (`top`): the kind of error at its place, nothing of the file's text.
        An included file's name is the loaded file's text: it is not named."""
        return replace(self, file=self.file if self.file == top else f"{top} (an include)",
                       message=redact(self.message))


class ConfigError(Exception):
    """Raised with every diagnostic found in a configuration."""

    def __init__(self, diagnostics: list[Diagnostic], ordered: bool = False):
        # ordered: already in the order to tell them (else: file order)
        self.diagnostics = list(diagnostics) if ordered else sorted(diagnostics, key=_order)
        super().__init__("\n".join(str(d) for d in self.diagnostics))

    def __str__(self) -> str:
        return "\n".join(str(d) for d in self.diagnostics)


def _order(d: Diagnostic):
    return (d.file, d.line, d.col)


class Reporter:
    """Collects diagnostics while reading, parsing and validating."""

    def __init__(self) -> None:
        self.errors: list[Diagnostic] = []
        self.warnings: list[Diagnostic] = []

    def error(self, where, message: str) -> None:
        file, line, col = where
        self.errors.append(Diagnostic(file, line, col, message))

    def warn(self, where, message: str) -> None:
        file, line, col = where
        self.warnings.append(Diagnostic(file, line, col, message, warning=True))

    def raise_if_errors(self) -> None:
        if self.errors:
            # keep one message per place and text, in file order
            seen, unique = set(), []
            for d in self.errors:
                key = (d.file, d.line, d.col, d.message)
                if key not in seen:
                    seen.add(key)
                    unique.append(d)
            raise ConfigError(unique)
