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
  and the host states (hoststated.states);
- and the whole table below (RULES): what each module of hoststated may
  import, and no import circle among them.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from fnmatch import fnmatchcase
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

# --- the whole table: every module of hoststated under one rule ---------------
#
# Each module falls under the first rule whose pattern names it. A rule says
# which of hoststated's modules it may import (prefixes: "conf" covers
# hoststated.conf and everything in it) and which third-party packages; the
# standard library is free except where a rule forbids some of it (the pure
# core does no I/O: no asyncio, socket, ssl or subprocess). Function-level
# imports count like module-level ones: a lazy import is still a dependency.
# test_no_import_circle: no circle among hoststated's modules.

PKG = ROOT / "hoststated"
IO = {"asyncio", "socket", "ssl", "subprocess", "selectors"}

# (module pattern, hoststated modules it may import, third-party packages, stdlib it must not)
RULES: list[tuple[str, set[str], set[str], set[str]]] = [
    ("states", set(), set(), IO),
    ("ipc.messages", {"states"}, set(), IO),
    ("ipc.codec", {"ipc.messages"}, {"msgpack"}, IO),
    ("ipc.channel", {"ipc.messages", "ipc.codec"}, set(), set()),
    ("ipc", set(), set(), IO),
    ("conf.model", set(), {"pydantic"}, IO | {"os"}),
    # (kernel.routes: the routers' checks of this machine's routing, issue 16)
    # (pyroute2: check arp's route lookups, issue 14)
    ("conf.load", {"conf", "kernel.routes"}, {"pydantic", "pyroute2"},
     {"asyncio", "ssl", "subprocess"}),
    ("conf.ports", set(), set(), {"asyncio", "ssl", "subprocess"}),
    # the relays' TLS files, read as root; ssl through relay_tls' option check
    ("conf.keypairs", {"conf.model", "conf.errors", "relay_tls"}, {"cryptography"},
     {"asyncio", "socket", "subprocess", "selectors"}),
    ("conf.*", {"conf"}, {"pydantic", "lark"}, IO),
    ("conf", set(), set(), IO),
    ("checks.runner", {"checks", "states", "privsep"}, set(), set()),
    ("checks.poller", {"checks.base", "states"}, set(), set()),
    ("checks.mysql", {"checks.base", "states"}, {"pymysql"}, {"socket", "ssl", "subprocess"}),
    ("checks.pgsql", {"checks.base", "states"}, {"pg8000"}, {"socket", "subprocess"}),
    ("checks.ldap", {"checks.base", "states"}, {"ldap3"}, {"socket", "subprocess"}),
    # conf.packages: the one lookup of a check's package (no import of it)
    ("checks.registry", {"checks", "states", "conf.model", "conf.packages"}, set(), IO),
    ("checks.*", {"checks", "states", "conf.model"}, {"dns", "cryptography"}, IO),
    ("checks", {"checks", "states"}, set(), IO),
    ("hce_state", {"states", "ipc.messages"}, set(), IO),
    ("hce_show", {"ipc.messages", "conf.model", "states", "hce_state"}, set(), IO),
    # (relay_proxy: the PROXY header a check sends to hosts that read one;
    # the codec is pure, no I/O)
    # (hce_arp: check arp's raw socket, issue 14)
    ("hce_sched", {"checks", "hce_state", "conf.model", "ipc.messages", "states",
                   "relay_proxy", "hce_arp", "hce_shards"}, set(), {"socket", "ssl", "subprocess"}),
    # issue 17: the sharding (pure) and hce's mirror of the check workers; no check code
    ("hce_shards", {"conf.model", "ipc", "states"}, set(), {"socket", "ssl", "subprocess"}),
    # issue 17: a check worker: the scheduler over its shard, its channels
    ("hce_worker", {"hce_sched", "hce_shards", "conf.model", "ipc", "proc", "privsep", "log"},
     set(), {"ssl", "subprocess"}),
    # issue 14: check arp's raw AF_PACKET socket, around the pure checks.arp
    ("hce_arp", {"checks.arp", "checks.base", "states", "privsep"}, set(),
     {"ssl", "subprocess"}),
    # hoststatectl.output: the text of a command line on the socket is
    # hoststatectl's own printout (output imports only the shared schema)
    ("control", {"ipc", "log"}, {"hoststatectl"}, set()),
    # the Prometheus exposition: pure, rows in, text out ("": the version)
    ("metrics", {"", "ipc.messages", "states"}, set(), IO),
    # contexts from the parent's material: ssl, no sockets, no key files
    # (cryptography: TLS inspection's certificates, imported only when configured)
    ("relay_tls", {"conf.model"}, {"cryptography"},
     {"asyncio", "socket", "subprocess", "selectors"}),
    # runtime weights and drains: pure, over the config (issue 13)
    ("hce_weights", {"conf.model"}, set(), IO),
    # issue 14: notify commands and alert mail, maintenance files (hce's)
    ("notify", {"log", "conf.model", "states", "commands", "proc"}, set(), {"ssl"}),
    ("inotify", set(), set(), {"ssl", "subprocess", "socket"}),
    ("maintenance", {"log", "conf.model", "inotify"}, set(), {"ssl", "subprocess"}),
    ("commands", set(), set(), {"ssl", "subprocess", "socket"}),
    ("autoreload", {"log", "inotify", "commands"}, set(), {"ssl", "subprocess"}),
    ("hce", {"hce_sched", "hce_shards", "metrics", "hce_show", "hce_state", "hce_weights", "control", "ipc",
             "passive",
             "notify", "maintenance", "inotify",
             "proc", "privsep", "log",
             "conf.model", "states", "checks"}, set(), set()),
    # pure PROXY protocol codec: socket for inet_pton/inet_ntop only
    ("relay_proxy", set(), set(), IO - {"socket"}),
    # the DNS relay: its sans-IO core and the asyncio driver in one module
    ("relay_dns", set(), set(), {"ssl", "subprocess"}),
    # a sans-IO HTTP session: the relay core does its I/O
    ("relay_http", {"conf.model", "relay_rules"}, {"httptools"}, IO),
    # a protocol's filter rules compiled: pure, heads in, verdicts out
    ("relay_rules", {"conf.model"}, set(), IO),
    ("kernel.service", {"conf.model", "states"}, set(), IO),
    ("kernel.diff", {"kernel.service", "conf.model", "states"}, set(), IO),
    ("kernel.slots", set(), set(), IO),
    ("kernel.desired", {"kernel.service", "kernel.slots", "conf.model", "states"}, set(), IO),
    ("kernel.backend", {"kernel.service", "kernel.diff"}, set(), IO),
    # the kernel counters carried across rewrites: pure
    ("kernel.counters", {"kernel.service"}, set(), IO),
    ("kernel.nft", {"kernel.backend", "kernel.service", "kernel.diff", "kernel.slots",
                    "conf.model", "states", "passive"}, {"nftables"}, set()),
    # issue 15: passive detection, sans-IO (NFLOG bytes in, decisions out)
    ("passive", {"conf.model"}, set(), IO),
    # issue 15: engine ipvs writes passive detection's rules with kernel.nft's
    ("kernel.ipvs", {"kernel.backend", "kernel.service", "kernel.diff", "kernel.slots",
                     "conf.model", "states", "kernel.nft"}, {"pyroute2", "nftables"}, set()),
    ("kernel.pf", {"kernel.backend", "kernel.service", "kernel.diff", "kernel.slots",
                   "conf.model", "states"}, set(), set()),
    # routers (issue 16): desired routes and their diff (pure), the rtnetlink writer
    ("kernel.routes", {"kernel.backend", "conf.model", "states"}, {"pyroute2"},
     {"asyncio", "ssl", "subprocess"}),
    ("kernel.reconciler", {"kernel", "conf.model", "states"}, set(), set()),
    ("kernel", {"kernel"}, set(), set()),
    ("pfe", {"kernel", "ipc", "proc", "privsep", "log", "conf.model", "conf.sysctl", "states"},
     set(), set()),
    ("proc", {"ipc", "log", "privsep"}, set(), set()),
    ("relay_select", set(), set(), IO),
    ("relay_tcp", {"relay_proxy"}, set(), {"subprocess", "ssl"}),
    # plain TCP by splice(2) on raw descriptors; no TLS, no HTTP
    ("relay_splice", {"relay_proxy", "log"}, set(), {"subprocess", "ssl"}),
    ("relay", {"relay_select", "relay_tcp", "relay_splice", "relay_tls", "relay_http", "relay_dns", "ipc", "proc", "privsep", "log",
               "conf.model", "states"}, {"uvloop"}, {"subprocess"}),
    ("parent_listen", {"conf.model", "ipc.messages"}, set(), {"asyncio", "subprocess"}),
    ("privsep", set(), set(), set()),
    # imports by name (importlib) what each role may need after its drop
    ("preload", set(), set(), set()),
    ("log", set(), set(), set()),
    ("parent", {"conf.load", "conf.model", "conf.errors", "conf.keypairs", "ipc", "proc",
                "privsep", "log", "parent_listen", "passive", "autoreload", "hce_shards"},
     set(), set()),
    # migrate (issue 14): the importers are pure, text in, hoststated.conf out
    ("importers.*", {"importers.common", "conf.lexer", "conf.ports"}, set(), IO | {"os"}),
    ("importers", {"importers"}, set(), IO | {"os"}),
    ("cli", {"parent", "hce", "hce_worker", "pfe", "relay", "preload", "conf.load", "conf.printconf", "conf.errors",
             "conf.model", "ipc", "log", "privsep", "proc", "importers"}, set(), set()),
    ("__main__", {"cli"}, set(), set()),
    ("", set(), set(), set()),                      # hoststated/__init__.py
]


def own_name(path: Path) -> str:
    """hoststated/kernel/nft.py -> "kernel.nft"."""
    rel = path.relative_to(PKG).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_imports(path: Path) -> set[str]:
    """Every absolute module name the file imports, at any depth.
    `from hoststated.kernel import nft` counts as hoststated.kernel.nft (and
    not as the package's face, unless names come from the face too)."""
    tree = ast.parse(path.read_text(), str(path))
    here = own_name(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ["hoststated"] + ([p for p in package.split(".") if p])
                base = base[:len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod == "__future__":
                continue
            subs = set()
            for a in node.names:
                sub = f"{mod}.{a.name}"
                p = ROOT / Path(*sub.split("."))
                if sub.startswith("hoststated.") and (p.with_suffix(".py").exists() or p.is_dir()):
                    subs.add(sub)
            out |= subs
            if len(subs) < len(node.names):       # names from the module itself
                out.add(mod)
    return out


def ours(names: set[str]) -> set[str]:
    """hoststated's own modules among names, without the 'hoststated.' prefix."""
    return {n[len("hoststated."):] for n in names if n.startswith("hoststated.")}


def rule_for(name: str):
    for pattern, may, third, banned in RULES:
        if pattern == name or (pattern.endswith(".*") and fnmatchcase(name, pattern)):
            return pattern, may, third, banned
    raise AssertionError(f"hoststated.{name}: no import rule names it; add one to RULES")


def allowed(target: str, may: set[str]) -> bool:
    return any(target == m or target.startswith(m + ".") for m in may)


MODULES = sorted(PKG.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: own_name(p) or "__init__")
def test_module_keeps_its_import_rule(path):
    name = own_name(path)
    pattern, may, third, banned = rule_for(name)
    names = all_imports(path)
    own = {n for n in ours(names)
           if n != name and not name.startswith(n + ".") and not n.startswith(name + ".")}
    bad_own = sorted(n for n in own if not allowed(n, may))
    top = {n.split(".")[0] for n in names if not n.startswith("hoststated")}
    bad_third = sorted(t for t in top if t not in STDLIB and t not in third
                       and t != "hoststated")
    bad_std = sorted(t for t in top if t in banned)
    assert not bad_own, f"hoststated.{name} (rule {pattern!r}) imports hoststated.{bad_own}"
    assert not bad_third, f"hoststated.{name} (rule {pattern!r}) imports {bad_third}"
    assert not bad_std, f"hoststated.{name} (rule {pattern!r}) must not import {bad_std}"


def graph() -> dict[str, set[str]]:
    nodes = {own_name(p) for p in MODULES}
    out = {}
    for p in MODULES:
        me = own_name(p)
        out[me] = {n for n in ours(all_imports(p)) if n in nodes and n != me}
    return out


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []
    counter = [0]
    sys.setrecursionlimit(max(1000, 4 * len(g)))

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in g[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return found


def test_no_import_circle():
    assert cycles(graph()) == []


def test_the_table_can_fail():
    # the scan sees lazy imports, and the cycle finder finds a circle
    assert "hoststated.ipc.messages" in all_imports(PKG / "ipc" / "codec.py")
    assert "asyncio" in {n.split(".")[0] for n in all_imports(PKG / "checks" / "runner.py")}
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert not allowed("checks.http", {"conf", "ipc"})
    assert allowed("conf.model", {"conf"})
    with pytest.raises(AssertionError):
        rule_for("no_such_module")


def test_test_modules_have_unique_basenames():
    # pytest's default import mode puts each test directory on sys.path and
    # imports a test file by its basename: two files of one name in
    # tests/unit and tests/integration stop the whole run at collection.
    seen: dict[str, Path] = {}
    clashes = []
    for path in sorted((ROOT / "tests").rglob("test_*.py")):
        if path.name in seen:
            clashes.append(f"{seen[path.name].relative_to(ROOT)} and {path.relative_to(ROOT)}")
        seen.setdefault(path.name, path)
    assert not clashes, "test modules of one name: " + "; ".join(clashes)
