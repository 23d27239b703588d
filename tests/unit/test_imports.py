"""The import direction of DESIGN.md §7, enforced on the source (AST, no
import side effects), plus one check that hoststatectl really stays light.

- conf.model imports only pydantic (and the standard library);
- checks (except the runner and its poller, which do the I/O) import no
  asyncio or socket at module level
  (a function may import socket to open raw sockets for the parent); the
  LibraryCheck modules (checks/base.py: an async `run` around a client
  library, for SQL and LDAP) are the documented exception;
- kernel never imports checks or control;
- hoststatectl imports from hoststated only the shared schema: the message
  vocabulary and its framing (hoststated.ipc.messages, hoststated.ipc.codec)
  and the host states (hoststated.states).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
STDLIB = set(sys.stdlib_module_names)
SHARED_SCHEMA = {"hoststated.ipc.messages", "hoststated.ipc.codec", "hoststated.states"}


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path, top_level_only: bool = False) -> set[str]:
    """Absolute names of everything the file imports."""
    tree = ast.parse(path.read_text(), str(path))
    pkg = module_name(path).rsplit(".", 0 if path.name == "__init__.py" else 1)[0]
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    out = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")
                base = base[:len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module
            if mod == "__future__":
                continue
            out.add(mod)
            # `from hoststated import log` imports hoststated.log
            out |= {f"{mod}.{a.name}" for a in node.names
                    if (ROOT / Path(*mod.split("."), a.name + ".py")).exists()
                    or (ROOT / Path(*mod.split("."), a.name)).is_dir()}
    return out


def files(*parts: str) -> list[Path]:
    base = ROOT.joinpath(*parts)
    return sorted(base.rglob("*.py")) if base.is_dir() else [base]


def top(name: str) -> str:
    return name.split(".")[0]


def test_conf_model_imports_only_pydantic():
    for name in imports(ROOT / "hoststated/conf/model.py"):
        assert top(name) in STDLIB or top(name) == "pydantic", name
        assert top(name) not in {"asyncio", "socket"}, name


def is_library_check(path: Path) -> bool:
    tree = ast.parse(path.read_text())
    return any(isinstance(n, ast.AsyncFunctionDef) and n.name == "run"
               for c in ast.walk(tree) if isinstance(c, ast.ClassDef) for n in c.body)


IO_MODULES = {"runner.py", "poller.py"}


@pytest.mark.parametrize("path", [p for p in files("hoststated", "checks")
                                  if p.name not in IO_MODULES and not is_library_check(p)],
                         ids=lambda p: p.name)
def test_checks_import_no_asyncio_or_socket(path):
    bad = {n for n in imports(path, top_level_only=True)
           if top(n) in {"asyncio", "socket", "ssl"}
           or n.startswith(("hoststated.checks.runner", "hoststated.checks.poller"))}
    assert not bad, f"{path.name} imports {sorted(bad)}"


@pytest.mark.parametrize("path", files("hoststated", "kernel"), ids=lambda p: p.name)
def test_kernel_never_imports_checks_or_control(path):
    bad = {n for n in imports(path) if n.startswith(("hoststated.checks", "hoststated.control",
                                                     "hoststated.hce", "hoststated.hce_sched"))}
    assert not bad, f"{path.name} imports {sorted(bad)}"


@pytest.mark.parametrize("path", files("hoststatectl"), ids=lambda p: p.name)
def test_hoststatectl_imports_only_the_shared_schema(path):
    ours = {n for n in imports(path) if top(n) == "hoststated" and n != "hoststated"
            and n != "hoststated.ipc"}
    assert ours <= SHARED_SCHEMA, f"{path.name} imports {sorted(ours - SHARED_SCHEMA)}"


def test_shared_schema_is_light():
    for mod in SHARED_SCHEMA:
        third = {top(n) for n in imports(ROOT / (mod.replace(".", "/") + ".py"))
                 if top(n) not in STDLIB and top(n) != "hoststated"}
        assert third <= {"msgpack"}, (mod, third)


def test_hoststatectl_loads_nothing_heavy():
    code = ("import sys, hoststatectl.main; "
            "print(' '.join(m for m in sys.modules if m.split('.')[0] in "
            "('pydantic', 'lark', 'asyncio', 'pyroute2', 'hoststated')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, check=True).stdout.split()
    assert not [m for m in out if m.split(".")[0] in ("pydantic", "lark", "asyncio", "pyroute2")]
    assert set(out) <= {"hoststated", "hoststated.ipc"} | SHARED_SCHEMA, out


def test_the_rules_can_fail(tmp_path):
    # the AST scan sees what these rules look for
    f = ROOT / "hoststatectl" / "main.py"
    assert "hoststated.ipc.messages" in imports(f)
    assert "hoststatectl.client" in imports(f)
    assert "asyncio" in imports(ROOT / "hoststated/checks/runner.py")
    assert not is_library_check(ROOT / "hoststated/checks/http.py")
