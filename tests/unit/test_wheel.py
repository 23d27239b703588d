"""The wheel ships the grammar: build it, install it in a fresh venv, parse a config.

Slow (builds a wheel); uses only what is installed already (no network):
the fresh venv sees the project venv's packages through
--system-site-packages, and the wheel is installed with --no-deps.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent.parent


def _setuptools_ok() -> bool:
    # pyproject's `license = "ISC"` (PEP 639) needs setuptools 77 to build
    import setuptools
    return int(setuptools.__version__.split(".")[0]) >= 77


@pytest.mark.slow
@pytest.mark.skipif(not _setuptools_ok(), reason="needs setuptools>=77 in the venv "
                    "(.venv/bin/pip install 'setuptools>=77')")
def test_wheel_installs_and_parses(tmp_path):
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(dist), str(ROOT)], check=True, timeout=300,
                   cwd=tmp_path)
    (wheel,) = dist.glob("hoststated-*.whl")
    venv = tmp_path / "venv"
    # the project venv's site-packages (lark, pydantic, ...) without the project itself
    site = next(Path(p) for p in sys.path if p.endswith("site-packages"))
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    (venv / "lib" / site.parent.name / "site-packages" / "deps.pth").write_text(
        f"{site}\n")
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index",
                    str(wheel)], check=True, timeout=300)
    conf = tmp_path / "outside.conf"
    conf.write_text('table <t> { 192.0.2.1 }\nredirect r {\n\tlisten on 192.0.2.9 port 80\n'
                    '\tforward to <t> check tcp\n}\n')
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    r = subprocess.run([str(venv / "bin" / "hoststated"), "-nv", "--no-lookup", "-f",
                        str(conf)], capture_output=True, text=True, timeout=60,
                       cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr
    assert "forward to <t> port 80 mode roundrobin check tcp" in r.stdout
    # and the code came from the wheel, not from the source tree
    r = subprocess.run([str(py), "-c", "import hoststated.grammar, hoststated.conf.load as l;"
                        "print(l.__file__)"], capture_output=True, text=True,
                       cwd=tmp_path, env=env, timeout=60)
    assert str(venv) in r.stdout, r.stdout + r.stderr
