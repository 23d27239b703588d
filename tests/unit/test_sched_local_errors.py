"""hce_sched's local-error rule, driven without sockets: a check that fails
for a reason of the daemon's own (no descriptor: HostError.TCP_SOCKET_LIMIT)
never changes the host; it is counted and logged at most once a minute.
Verdicts are handed to the scheduler the way the runner hands them
(CheckEngine._done with the probe's running token)."""

import logging

import pytest

from hoststated import hce_sched
from hoststated.checks.base import failed, passed
from hoststated.conf.load import load_text
from hoststated.hce_sched import CheckEngine
from hoststated.states import HostError, HostStatus

CONF = """
table <web> { 198.51.100.11 }
redirect "www" {
	listen on 203.0.113.10 port 80
	forward to <web> port 80 check tcp
}
"""

OK = passed(HostError.TCP_CONNECT_OK)
NO_FD = failed(HostError.TCP_SOCKET_LIMIT, "Too many open files")
REFUSED = failed(HostError.TCP_CONNECT_FAIL, "Connection refused")


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


@pytest.fixture
def engine():
    clock = Clock()
    changes = []
    eng = CheckEngine(load_text(CONF, lookup=False), changes.append, clock=clock)
    return eng, clock, changes


def give(eng, verdict):
    """One check of the (only) probe: started, then its verdict."""
    (p,) = eng.probes.values()
    token = object()
    p.task, p.started = token, eng.clock()
    eng.in_flight += 1
    eng._done(p, token, verdict)


def test_local_errors_never_take_a_host_down(engine, caplog):
    eng, clock, changes = engine
    give(eng, OK)
    (h,) = eng.hosts()
    assert h.status == HostStatus.UP and h.check_cnt == 1
    with caplog.at_level(logging.INFO, logger="hoststated.hce"):
        for _ in range(100):
            give(eng, NO_FD)
            clock.now += 0.1                    # 10 s of them
    (h,) = eng.hosts()
    assert h.status == HostStatus.UP
    assert (h.check_cnt, h.up_cnt, h.retry_cnt) == (1, 1, 0)     # not counted as checks
    assert h.error == HostError.TCP_CONNECT_OK                  # the last real check's word
    assert len(changes) == 1                                    # only unknown -> up
    st = eng.stats()
    assert st.local_errors == 100 and st.checks_done == 1 and st.checks_in_flight == 0
    lines = [r for r in caplog.records if "not counted" in r.getMessage()]
    assert len(lines) == 1 and lines[0].levelno == logging.WARNING
    assert "tcp socket limit: Too many open files" in lines[0].getMessage()


def test_local_errors_logged_again_after_a_while(engine, caplog):
    eng, clock, _ = engine
    with caplog.at_level(logging.WARNING, logger="hoststated.hce"):
        give(eng, NO_FD)
        for _ in range(5):
            clock.now += 1
            give(eng, NO_FD)
        clock.now += hce_sched.LOCAL_LOG_EVERY
        give(eng, NO_FD)
    lines = [r.getMessage() for r in caplog.records if "not counted" in r.getMessage()]
    assert len(lines) == 2
    assert "1 such since the last report" in lines[0]
    assert "6 such since the last report" in lines[1]


def test_an_unknown_host_stays_unknown(engine):
    eng, _, changes = engine
    for _ in range(10):
        give(eng, NO_FD)
    (h,) = eng.hosts()
    assert h.status == HostStatus.UNKNOWN and h.check_cnt == 0 and changes == []


def test_a_real_failure_still_counts(engine):
    # the rule is for our own limits only: a refused connect takes it down
    eng, _, changes = engine
    give(eng, OK)
    give(eng, NO_FD)
    give(eng, REFUSED)
    (h,) = eng.hosts()
    assert h.status == HostStatus.DOWN and h.check_cnt == 2
    assert [c.status for c in changes] == [HostStatus.UP, HostStatus.DOWN]
    assert eng.stats().local_errors == 1


def test_local_errors_shown_in_stats():
    from hoststated.ipc.messages import Stats
    assert ("local_errors", 3) in Stats(local_errors=3).items()
    assert Stats.from_wire({"local_errors": 3}).local_errors == 3
