"""hoststated.relay: what a relay process tells the operator at start."""

from __future__ import annotations

import asyncio

import pytest

from hoststated import relay, relay_http


def test_the_relay_says_it_runs_on_uvloop():
    uvloop = pytest.importorskip("uvloop")
    loop = uvloop.new_event_loop()
    try:
        assert relay.runs_on(loop) == "event loop uvloop"
    finally:
        loop.close()
    loop = relay.event_loop()           # what it picks when uvloop is there
    try:
        assert type(loop).__module__.startswith("uvloop")
    finally:
        loop.close()


def test_the_relay_says_which_fallback_is_slower_and_how_to_avoid_it(monkeypatch):
    # whatever parse_head is, the sessions read heads by relay_http's scan
    monkeypatch.setattr(relay_http, "parse_head", relay_http.parse_head_own)
    loop = asyncio.new_event_loop()
    try:
        assert relay.runs_on(loop) == (
            "event loop asyncio's own (slower: uvloop is missing; "
            "pip install 'hoststated[relay]')")
    finally:
        loop.close()
