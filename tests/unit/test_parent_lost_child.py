"""Which child the parent names when children die together: one child's
death often ends another (its channel closes and it leaves cleanly), and on a
loaded machine the one that failed may be seen exiting seconds after the
bystander. The parent names the failure, not the bystander."""

from __future__ import annotations

import argparse
import asyncio
import logging
import types

from hoststated.conf.load import load_text
from hoststated.parent import LOST_CHILD_GRACE, Parent


def parent() -> Parent:
    args = argparse.Namespace(config_file="/etc/x.conf", verbose=0, debug=True,
                              defines={}, no_lookup=True)
    p = Parent(args, load_text("engine none\ntable <t> { 198.51.100.11 }\n", lookup=False),
               65534, 65534, [], [])
    p.children = {n: types.SimpleNamespace(name=n, status=None) for n in ("hce", "pfe")}
    return p


def test_the_failed_child_is_named_though_seen_after_the_bystander(caplog):
    async def go():
        p = parent()
        p.children["hce"].status = 0          # left cleanly: pfe closed its channel
        p._losing = True
        p._lost_child()
        await asyncio.sleep(5 * LOST_CHILD_GRACE)
        assert not p._stop.is_set()           # still waiting for the failure
        p.children["pfe"].status = 1
        await asyncio.wait_for(p._stop.wait(), 2)
        return p
    with caplog.at_level(logging.ERROR, logger="hoststated"):
        p = asyncio.run(go())
    assert p.exit_status == 1
    assert [r.getMessage() for r in caplog.records] == ["lost child: pfe exited with status 1"]


def test_a_clean_exit_alone_is_named_once_the_wait_is_over(caplog, monkeypatch):
    monkeypatch.setattr("hoststated.parent.EXIT_WAIT", 4 * LOST_CHILD_GRACE)
    async def go():
        p = parent()
        p.children["hce"].status = 0
        p._losing = True
        p._lost_child()
        await asyncio.wait_for(p._stop.wait(), 3)
        return p
    with caplog.at_level(logging.ERROR, logger="hoststated"):
        p = asyncio.run(go())
    assert p.exit_status == 1
    assert [r.getMessage() for r in caplog.records] == ["lost child: hce exited"]
