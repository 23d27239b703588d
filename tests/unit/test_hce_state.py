"""The host state machine: every state x input, with hypothesis."""

from hypothesis import given, settings, strategies as st

from hoststated.hce_state import (TRANSITIONS, Event, HostState, fall_count, next_interval, step)
from hoststated.ipc.messages import HostRow
from hoststated.states import HostStatus

S = HostStatus
statuses = st.sampled_from(list(S))
events = st.sampled_from(list(Event))
results = st.lists(st.sampled_from([Event.SUCCESS, Event.FAILURE]), max_size=60)


def test_table_covers_every_state_and_input():
    assert set(TRANSITIONS) == {(s, e) for s in S for e in Event}


@st.composite
def states(draw):
    status = draw(statuses)
    rise_cnt = draw(st.integers(0, 5)) if status in (S.UNKNOWN, S.DOWN) else 0
    fall_cnt = draw(st.integers(0, 5)) if status == S.UP else 0
    check = draw(st.integers(0, 100))
    return HostState(status, rise_cnt, fall_cnt, check, draw(st.integers(0, check)))


@settings(deadline=None)      # the shared machine is busy; no timing here
@given(states(), events, st.integers(1, 6), st.integers(1, 6))
def test_every_state_and_input(s, ev, rise, fall):
    n = step(s, ev, rise=rise, fall=fall)
    if ev == Event.DISABLE:
        assert n.status == S.DISABLED and not n.in_transition
    elif ev == Event.ENABLE:
        assert n.status == (S.UNKNOWN if s.status == S.DISABLED else s.status)
    elif s.status == S.DISABLED:
        assert n == s                                      # results ignored
    else:
        assert n.check_cnt == s.check_cnt + 1
        assert n.up_cnt == s.up_cnt + (ev == Event.SUCCESS)
        if ev == Event.SUCCESS:
            assert n.fall_cnt == 0
            if s.status == S.UP:
                assert n.status == S.UP
            else:
                assert n.status == (S.UP if s.rise_cnt + 1 >= rise else s.status)
        else:
            assert n.rise_cnt == 0
            if s.status == S.UP:
                assert n.status == (S.DOWN if s.fall_cnt + 1 >= fall else S.UP)
            else:
                assert n.status == S.DOWN                  # relayd: unknown fails -> down
    assert 0 <= n.up_cnt <= n.check_cnt


@settings(deadline=None)
@given(results, st.integers(1, 5), st.integers(1, 5))
def test_status_follows_runs_of_results(seq, rise, fall):
    """Up only after `rise` successes in a row, down from up only after
    `fall` failures in a row."""
    s = HostState()
    run_ok = run_fail = 0
    for ev in seq:
        prev = s.status
        s = step(s, ev, rise=rise, fall=fall)
        run_ok, run_fail = (run_ok + 1, 0) if ev == Event.SUCCESS else (0, run_fail + 1)
        if s.status == S.UP and prev != S.UP:
            assert run_ok >= rise
        if s.status == S.DOWN and prev == S.UP:
            assert run_fail >= fall
        if prev == S.UP and s.status == S.UP:
            assert run_fail < fall
    assert s.check_cnt == len(seq)


def test_relayd_defaults_one_success_up_retry_plus_one_down():
    f = fall_count(retry=2, fall=None)
    assert f == 3 and fall_count(2, 5) == 5
    s = step(HostState(), Event.SUCCESS)
    assert s.status == S.UP
    for _ in range(2):
        s = step(s, Event.FAILURE, fall=f)
        assert s.status == S.UP and s.in_transition
    s = step(s, Event.FAILURE, fall=f)
    assert s.status == S.DOWN
    assert step(HostState(), Event.FAILURE, fall=f).status == S.DOWN


def test_flapping_host_against_rise_and_fall():
    s = step(HostState(), Event.SUCCESS, rise=2)
    assert s.status == S.UNKNOWN and s.in_transition
    s = step(s, Event.SUCCESS, rise=2)
    assert s.status == S.UP
    for _ in range(10):                                    # ok, fail, ok, fail...
        s = step(s, Event.FAILURE, rise=2, fall=2)
        s = step(s, Event.SUCCESS, rise=2, fall=2)
        assert s.status == S.UP
    # availability has one home, the host row
    assert HostRow(1, "h", "t", check_cnt=s.check_cnt, up_cnt=s.up_cnt).availability == \
        100.0 * 12 / 22


def test_intervals():
    up, down = HostState(S.UP), HostState(S.DOWN)
    assert next_interval(up, 10, fast_interval=1, down_interval=30) == 10
    assert next_interval(HostState(S.UP, fall_cnt=1), 10, fast_interval=1) == 1
    assert next_interval(HostState(S.DOWN, rise_cnt=1), 10, fast_interval=2, down_interval=30) == 2
    assert next_interval(down, 10, fast_interval=1, down_interval=30) == 30
    assert next_interval(down, 10) == 10
