"""Issue 19's fault campaign, control part, at CI size: 4,000 seeded cases of
bench/fuzz_control.py (deterministic) through the real control conversation
(encoding detection, codec, messages.check_request, reply encoding) and the
IPC schema. No exception but the peer going away, no error logged, every
reply decodes with a known code and a reason. (The benchmark run:
`bench/fuzz_control.py --cases 100000`.)"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent.parent / "bench"))

import fuzz_control  # noqa: E402


def test_seeded_control_fuzz_campaign():
    stats = fuzz_control.campaign(4000, seed=19)
    assert (stats["crashes"], stats["bad_replies"]) == (0, 0), stats["examples"]
    assert stats["control_cases"] + stats["ipc_cases"] == 4000
    # both kinds of stream, and both kinds of reply, are exercised
    assert stats["control_cases"] >= 1000 and stats["ipc_cases"] >= 1000, stats
    assert stats["replies_ok"] >= 100 and stats["replies_error"] >= 1000, stats


def test_the_campaign_sees_a_crash():
    # the harness is not blind: a decoder bug is counted with its exception
    from hoststated.ipc import messages
    real = messages.check_request

    def broken(obj):
        if isinstance(obj, dict) and obj.get("v") == 2:
            raise KeyError("a bug")
        return real(obj)
    messages.check_request = broken
    try:
        stats = fuzz_control.campaign(1500, seed=19)
    finally:
        messages.check_request = real
    assert stats["crashes"] > 0
    assert stats["examples"][0]["outcome"] == "crash: KeyError: 'a bug'"
