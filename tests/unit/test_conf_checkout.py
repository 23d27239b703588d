"""A plain checkout loads configs: no `pip install -e`, only the dependencies.

The test venv has the editable install (its finder maps hoststated.grammar
onto grammar/), which would hide a loader that only works installed; so the
child runs with -S (no site: no .pth, no editable finder) and a PYTHONPATH of
exactly the checkout and the directories the dependencies live in.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEPS = ("lark", "pydantic", "pydantic_core", "typing_extensions", "annotated_types",
        "typing_inspection", "msgpack")


def dep_dirs() -> list[str]:
    out = []
    for name in DEPS:
        spec = importlib.util.find_spec(name)
        if spec is None or spec.origin is None:
            continue
        origin = Path(spec.origin)
        d = str(origin.parent.parent if origin.name == "__init__.py" else origin.parent)
        if d not in out:
            out.append(d)
    return out


def plain(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8",
           "PYTHONPATH": os.pathsep.join([str(ROOT), *dep_dirs()])}
    return subprocess.run([sys.executable, "-S", *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=120)


def test_the_child_sees_no_installed_copy(tmp_path):
    r = plain(["-c", "import importlib.util, hoststated; "
                     "print(importlib.util.find_spec('hoststated.grammar'), hoststated.__file__)"],
              tmp_path)
    assert r.returncode == 0, r.stderr
    spec, where = r.stdout.split()
    assert spec == "None"                            # no editable mapping of grammar/
    assert Path(where).is_relative_to(ROOT)


def test_a_plain_checkout_checks_the_shipped_config(tmp_path):
    r = plain(["-m", "hoststated", "-n", "--no-lookup", "-f", str(ROOT / "etc/hoststated.conf")],
              tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stderr.strip().splitlines()[-1] == "configuration OK"
