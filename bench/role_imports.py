"""What each of the daemon's processes imports, and what that costs in RSS
(issue 17 item 3). Not part of the test suite; no root needed:

    .venv/bin/python bench/role_imports.py [--config FILE] [--importtime N]

Per role (parent, hce, pfe) a fresh interpreter imports what that process
imports before it has any host, in its order: the parent hoststated.cli,
hoststated.parent and the config loader it calls at start; a child
hoststated.cli, its role's module (cli.ROLES) and what hoststated.preload
imports for the configuration as INIT carries it (made here with conf.load
and parent.wire_config: a child reads no file). VmRSS (/proc/self/status)
is read before and after each step, and around every import (a hook on
importlib's _find_and_load): the imports that grew RSS by --min-mb or more
are printed as a tree (a module's figure holds what it imported), and the
modules a role holds are summed by group (each module's own growth, less
what it imported), with the groups whose code that role never runs marked
NOT NEEDED (ROLE_NEEDS says what each role runs). RSS moves by pages and
malloc arenas: a module's figure is approximate, the steps are exact.

--importtime N: the N imports with the largest cumulative time of each role
(python -X importtime), in ms.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable

# A small config the roles are given: engine none, one table, http checks
CONFIG = """
socket "/tmp/role-imports.sock"
engine none
interval 1
timeout 800
table <be> { 198.51.100.1, 198.51.100.2 }
redirect "p8080" {
	listen on 203.0.113.10 port 8080
	forward to <be> port 8080 check http "/" code 200
}
"""

# argv: role, config path, the config as INIT carries it (a JSON file).
# Prints one JSON object: the steps' RSS and the modules loaded at the end.
PROBE = r'''
import importlib, json, sys
def rss():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
role, path, wire = sys.argv[1], sys.argv[2], sys.argv[3]
# every import's RSS: (depth, name, kB before, kB after), in completion order;
# the import statement calls _frozen_importlib._find_and_load by name
import importlib._bootstrap as B
_orig, _stack, rows = B._find_and_load, [], []
def _traced(name, import_):
    if name in sys.modules:
        return _orig(name, import_)
    depth, r0 = len(_stack), rss()
    _stack.append(name)
    try:
        return _orig(name, import_)
    finally:
        _stack.pop()
        rows.append((depth, name, r0, rss()))
B._find_and_load = _traced
steps = [("interpreter", rss())]
import hoststated.cli as cli
steps.append(("hoststated.cli", rss()))
if role == "parent":
    from hoststated import parent
    steps.append(("hoststated.parent", rss()))
    from hoststated.conf.load import load
    config = load(path, lookup=False)
    steps.append(("conf.load + the config read", rss()))
else:
    importlib.import_module(cli.ROLES[role])
    steps.append((cli.ROLES[role], rss()))
    from hoststated import preload
    with open(wire) as f:
        data = json.load(f)
    preload.preload(role, data)
    steps.append(("hoststated.preload for the config", rss()))
B._find_and_load = _orig
print(json.dumps({"steps": steps, "modules": sorted(sys.modules), "imports": rows}))
'''

# module-name prefix -> group; the first match wins
GROUPS = [
    ("hoststated.conf.lalr", "config parser (lexer, LALR tables, grammar, parse, build, load)"),
    ("hoststated.conf.lexer", "config parser (lexer, LALR tables, grammar, parse, build, load)"),
    ("hoststated.conf.grammar", "config parser (lexer, LALR tables, grammar, parse, build, load)"),
    ("hoststated.conf.parse", "config parser (lexer, LALR tables, grammar, parse, build, load)"),
    ("hoststated.conf.build", "config parser (lexer, LALR tables, grammar, parse, build, load)"),
    ("hoststated.conf.load", "config parser (lexer, LALR tables, grammar, parse, build, load)"),
    ("hoststated.conf.printconf", "config printer"),
    ("hoststated.conf", "config model (conf.model, errors, ports)"),
    ("pydantic", "pydantic (the config model's base)"),
    ("hoststated.checks", "check code (hoststated.checks.*)"),
    ("hoststated.hce", "hce's own modules"),
    ("hoststated.control", "control socket server"),
    ("hoststated.metrics", "metrics"),
    ("hoststated.kernel", "kernel code (hoststated.kernel.*)"),
    ("hoststated.relay", "relay code (hoststated.relay*)"),
    ("hoststated.ipc", "ipc (messages, codec, channel)"),
    ("msgpack", "msgpack"),
    ("cryptography", "cryptography"),
    ("nftables", "nftables binding"),
    ("pyroute2", "pyroute2"),
    ("asyncio", "asyncio"),
    ("ssl", "ssl"),
    ("concurrent", "concurrent.futures"),
    ("email", "email"),
    ("hoststated", "hoststated: the rest (cli, log, proc, privsep, states, ...)"),
]

# what each role runs: a group it holds outside this is not needed
ROLE_NEEDS = {
    "parent": {"config parser (lexer, LALR tables, grammar, parse, build, load)",
               "config model (conf.model, errors, ports)", "pydantic (the config model's base)",
               "ipc (messages, codec, channel)", "msgpack", "asyncio",
               "hoststated: the rest (cli, log, proc, privsep, states, ...)",
               "concurrent.futures", "ssl", "email", "cryptography", "config printer"},
    "hce": {"config model (conf.model, errors, ports)", "pydantic (the config model's base)",
            "check code (hoststated.checks.*)", "hce's own modules", "control socket server",
            "metrics", "ipc (messages, codec, channel)", "msgpack", "asyncio", "ssl",
            "concurrent.futures", "email", "cryptography",
            "hoststated: the rest (cli, log, proc, privsep, states, ...)"},
    "pfe": {"config model (conf.model, errors, ports)", "pydantic (the config model's base)",
            "kernel code (hoststated.kernel.*)", "ipc (messages, codec, channel)", "msgpack",
            "asyncio", "concurrent.futures", "nftables binding", "pyroute2",
            "hoststated: the rest (cli, log, proc, privsep, states, ...)"},
}


def group_of(mod: str) -> str | None:
    for prefix, g in GROUPS:
        if mod == prefix or mod.startswith(prefix + ".") or \
                (prefix.startswith("hoststated.") and mod.startswith(prefix)):
            return g
    return None


def probe(role: str, conf: str, wire: str) -> dict:
    r = subprocess.run([PYTHON, "-c", PROBE, role, conf, wire], capture_output=True, text=True,
                       cwd=str(ROOT), env={**os.environ, "PYTHONPATH": str(ROOT)})
    if r.returncode != 0:
        raise SystemExit(f"probe {role}: {r.stderr.strip()[-500:]}")
    return json.loads(r.stdout)


def own_rss(imports: list) -> dict[str, int]:
    """module -> kB its import added itself: its RSS growth less that of
    the imports it made (nested deeper, completed before it)."""
    own: dict[str, int] = {}
    pending: list[tuple[int, int]] = []          # (depth, cumulative kB) of finished children
    for depth, name, r0, r1 in imports:
        total = r1 - r0
        children = sum(c for d, c in pending if d == depth + 1)
        pending = [(d, c) for d, c in pending if d <= depth]
        pending.append((depth, total))
        own[name] = total - children
    return own


def tree(imports: list, min_kb: int, max_depth: int) -> list[str]:
    """The imports that grew RSS by at least min_kb, nested, in import order."""
    # completion order -> start order: a module starts before what it imports
    out: list[tuple[int, str, int]] = []
    stack: list[list] = []
    for depth, name, r0, r1 in imports:
        node = [depth, name, r1 - r0, []]
        while stack and stack[-1][0] > depth:
            node[3].insert(0, stack.pop())
        stack.append(node)

    def walk(node, lines):
        depth, name, kb, kids = node
        if kb >= min_kb and depth <= max_depth:
            lines.append(f"{'  ' * depth}{kb / 1024:5.1f} MB  {name}")
            for k in kids:
                walk(k, lines)
    lines: list[str] = []
    for node in stack:
        walk(node, lines)
    return lines


def importtime(role: str, conf: str, wire: str, top: int) -> list[tuple[float, str]]:
    r = subprocess.run([PYTHON, "-X", "importtime", "-c", PROBE, role, conf, wire],
                       capture_output=True, text=True, cwd=str(ROOT),
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    rows = []
    for line in r.stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        self_us, cum_us, name = line[len("import time:"):].split("|")
        rows.append((int(cum_us) / 1000, name.rstrip()))
    # the outermost imports (least indented) first: a parent's time holds its children's
    return sorted(rows, key=lambda r: -r[0])[:top]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", help="a config file instead of the small built-in one")
    ap.add_argument("--importtime", type=int, default=0, metavar="N")
    ap.add_argument("--min-mb", type=float, default=1.0, help="tree: imports that added this")
    ap.add_argument("--depth", type=int, default=3, help="tree: this deep")
    a = ap.parse_args()
    conf = a.config
    if conf is None:
        fd, conf = tempfile.mkstemp(suffix=".conf")
        os.write(fd, CONFIG.encode())
        os.close(fd)
    # the config as INIT carries it, made here (a child reads no file)
    sys.path.insert(0, str(ROOT))
    from hoststated.conf.load import load
    from hoststated.parent import wire_config
    fd, wire = tempfile.mkstemp(suffix=".json")
    os.write(fd, json.dumps(wire_config(load(conf, lookup=False))).encode())
    os.close(fd)
    try:
        print(f"{PYTHON} ({sys.version.split()[0]}); VmRSS in MB after each step, "
              f"in a fresh interpreter per role")
        for role in ("parent", "hce", "pfe"):
            p = probe(role, conf, wire)
            steps = p["steps"]
            line = [f"{role}:"]
            prev = None
            for name, kb in steps:
                if name.startswith("("):
                    continue
                line.append(f"{name} {kb / 1024:.1f}" +
                            (f" (+{(kb - prev) / 1024:.1f})" if prev is not None else ""))
                prev = kb
            print("  " + "; ".join(line))
            own = own_rss(p["imports"])
            groups: dict[str, list[str]] = {}
            for m in p["modules"]:
                g = group_of(m)
                if g:
                    groups.setdefault(g, []).append(m)
            print(f"    by group, the RSS its modules' imports added themselves (MB):")
            for g, mods in sorted(groups.items(), key=lambda kv: -sum(own.get(m, 0) for m in kv[1])):
                kb = sum(own.get(m, 0) for m in mods)
                unneeded = g not in ROLE_NEEDS[role]
                print(f"      {kb / 1024:5.1f}  {'NOT NEEDED ' if unneeded else ''}{g}: "
                      f"{len(mods)} modules" +
                      (f" [{', '.join(mods[:10])}{', ...' if len(mods) > 10 else ''}]"
                       if unneeded or g.startswith("hoststated:") else ""))
            print(f"    the imports that added >= {a.min_mb:g} MB (with what they imported):")
            for ln in tree(p["imports"], int(a.min_mb * 1024), a.depth):
                print("      " + ln)
            if a.importtime:
                print(f"    slowest imports (cumulative ms, -X importtime):")
                for ms, name in importtime(role, conf, wire, a.importtime):
                    print(f"      {ms:7.1f}  {name.strip()}")
    finally:
        os.unlink(wire)
        if a.config is None:
            os.unlink(conf)
    return 0


if __name__ == "__main__":
    sys.exit(main())
