"""Configuration errors: every problem found, each as `file:line:col: message`."""

from __future__ import annotations

from dataclasses import dataclass


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


class ConfigError(Exception):
    """Raised with every diagnostic found in a configuration."""

    def __init__(self, diagnostics: list[Diagnostic]):
        self.diagnostics = sorted(diagnostics, key=_order) if diagnostics else []
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
