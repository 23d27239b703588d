"""Issue 14 item 3 end to end: `autoreload callback` with the real daemon
(engine none) in a namespace and inotify on real files.

- an edit of an included file (written in place) reloads; the callback
  runs after it, unprivileged, with the configuration file;
- a broken edit (renamed over the top file, as editors save) is refused
  with its place, the running config kept, no callback; fixing it reloads.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lab import Lab, usable, wait_for  # noqa: E402

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(not usable(), reason="needs root and ip")]

A, B = "198.51.100.81", "198.51.100.82"

CONFIG = """\
socket "{socket}"
engine none
interval 1
timeout 500
autoreload callback "{tmp}/cb.sh reloaded"
include "{tmp}/tables.conf"
redirect "www" {{
	listen on 203.0.113.81 port 80
	forward to <web> port 80 check tcp
}}
"""

CALLBACK = """#!/bin/sh
python3 -c 'import json, os, sys; print(json.dumps({"uid": os.getuid(), "argv": sys.argv[1:], "config": os.environ.get("HOSTSTATED_CONFIG")}))' "$@" >> %s
"""


def tables(*hosts: str) -> str:
    return "table <web> { " + ", ".join(hosts) + " }\n"


def test_edits_reload_and_call_back(tmp_path):
    with Lab(prefix="nt-ar") as lab:
        ns = lab.netns("d")
        lab.addr(ns, "lo", f"{A}/32", f"{B}/32")
        for a in (A, B):
            lab.http(ns, a, 80)
        lab.tmp.chmod(0o755)
        out = lab.tmp / "out"
        out.mkdir()
        out.chmod(0o777)
        cb = lab.tmp / "cb.sh"
        cb.write_text(CALLBACK % (out / "calls"))
        cb.chmod(0o755)
        inc = lab.tmp / "tables.conf"
        inc.write_text(tables(A))
        d = lab.daemon(ns, CONFIG, name="ar.conf")

        def calls() -> list[dict]:
            try:
                return [json.loads(x) for x in (out / "calls").read_text().splitlines()]
            except FileNotFoundError:
                return []

        d.wait_statuses({A: "up"})
        assert B not in d.statuses()
        # written in place
        inc.write_text(tables(A, B))
        d.wait_statuses({A: "up", B: "up"}, timeout=30)
        d.wait_for(lambda: len(calls()) == 1, what="the callback")
        (call,) = calls()
        assert call["uid"] != 0
        assert call["argv"] == ["reloaded", str(d.conf)]
        assert call["config"] == str(d.conf)
        assert f"autoreload: {inc} changed" in d.read_log()

        # a broken top file, renamed into place: refused with its place
        good = d.conf.read_text()
        new = d.conf.with_name("ar.conf.new")
        new.write_text(good + "bogus line here\n")
        os.rename(new, d.conf)
        line = good.count("\n") + 1
        d.wait_for(lambda: f"{d.conf}:{line}:1: unknown keyword 'bogus'" in d.read_log(),
                   what="the refused reload")
        assert "reload failed, keeping the running config" in d.read_log()
        summary = d.json("show summary")
        assert summary["daemon"]["reload_ok"] is False, summary
        assert d.statuses().get(B) == "up"
        # fixed: reloaded, called back once more (the broken one was not)
        new.write_text(good.replace("interval 1", "interval 2"))
        os.rename(new, d.conf)
        d.wait_for(lambda: len(calls()) == 2, what="the callback after the fix")
        wait_for(lambda: d.json("show summary")["daemon"]["reload_ok"] is True)
        assert d.proc.poll() is None
