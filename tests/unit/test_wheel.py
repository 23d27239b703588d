"""The wheel ships the grammar: build it, install it in a fresh venv, parse a config.
The wheel and the sdist carry the man pages, the systemd unit, the
sysusers.d file, the example configurations and the shell completion, and
pip puts them under the prefix (DATA).

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
# under the install prefix: what pyproject's data-files promise
DATA = {
    "share/man/man8/hoststated.8", "share/man/man8/hoststatectl.8",
    "share/man/man5/hoststated.conf.5", "lib/systemd/system/hoststated.service",
    "share/hoststated/hoststated.sysusers", "share/doc/hoststated/examples/hoststated.conf",
    "share/doc/hoststated/examples/relays.conf",
    "share/bash-completion/completions/hoststated.bash",
    "share/bash-completion/completions/hoststatectl.bash",
    "share/zsh/site-functions/_hoststated", "share/zsh/site-functions/_hoststatectl",
}


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
    import zipfile
    names = zipfile.ZipFile(wheel).namelist()
    assert {f"hoststated-0.1.0.data/data/{d}" for d in DATA} <= set(names), names
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
    assert all((venv / d).is_file() for d in DATA), sorted(d for d in DATA
                                                        if not (venv / d).is_file())
    # and the code came from the wheel, not from the source tree
    r = subprocess.run([str(py), "-c", "import hoststated.grammar, hoststated.conf.load as l;"
                        "print(l.__file__)"], capture_output=True, text=True,
                       cwd=tmp_path, env=env, timeout=60)
    assert str(venv) in r.stdout, r.stdout + r.stderr


def fresh_venv(tmp_path: Path) -> Path:
    """A venv that sees the project venv's packages (deps.pth), not the
    project; its pip and setuptools are the project venv's too (setuptools>=77
    for pyproject's license), not the older ones a venv gets."""
    site = next(Path(p) for p in sys.path if p.endswith("site-packages"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                   timeout=120)
    (venv / "lib" / site.parent.name / "site-packages" / "deps.pth").write_text(f"{site}\n")
    return venv


@pytest.mark.slow
@pytest.mark.skipif(not _setuptools_ok(), reason="needs setuptools>=77 in the venv")
def test_sdist_installs_with_its_files(tmp_path):
    """pip install of the sdist (built here) puts DATA under the prefix, and
    the man page there is the one man renders."""
    dist = tmp_path / "dist"
    r = subprocess.run([sys.executable, "-c", "import sys; from setuptools import build_meta;"
                        f"print(build_meta.build_sdist({str(dist)!r}))"],
                       capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr
    sdist = dist / r.stdout.split()[-1]
    import tarfile
    with tarfile.open(sdist) as t:
        names = {n.split("/", 1)[1] for n in t.getnames() if "/" in n}
    assert {"man/hoststatectl.8", "etc/hoststated.service", "etc/hoststated.sysusers",
            "etc/completion/_hoststatectl", "grammar/hoststated.lark"} <= names
    venv = fresh_venv(tmp_path)
    r = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-deps",
                        "--no-index", "--no-build-isolation", str(sdist)],
                       capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    missing = sorted(d for d in DATA if not (venv / d).is_file())
    assert not missing, missing
    assert (venv / "share/man/man8/hoststatectl.8").read_text() == \
        (ROOT / "man/hoststatectl.8").read_text()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    r = subprocess.run([str(venv / "bin" / "hoststated"), "-n", "--no-lookup", "-f",
                        str(venv / "share/doc/hoststated/examples/monitor-only.conf")],
                       capture_output=True, text=True, timeout=60, cwd=tmp_path, env=env)
    assert r.returncode == 0 and "configuration OK" in r.stderr, r.stderr
