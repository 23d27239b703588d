"""Host state: a pure, table-driven machine with rise and fall counts.

States unknown, up, down, disabled; inputs a check's success or failure,
disable, enable. relayd's rules, widened as HAProxy's:
- `retry N` means fall N+1: an up host goes down after N+1 consecutive
  failures (CheckOptions.fall overrides it);
- rise (default 1, relayd's "a single success brings it up") consecutive
  successes bring an unknown or down host up;
- from unknown a failure means down at once (relayd: retry_cnt starts at 0);
- results for a disabled host are ignored; enabling it makes it unknown.
While a host is in transition (failures counted while up, successes
counted while down) it is checked every `fast_interval`, and while down
every `down_interval` (HAProxy's fastinter / downinter).

Nothing here reads a clock: times are parameters."""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace
from typing import Callable

from hoststated.states import HostStatus


class Event(enum.Enum):
    SUCCESS = "success"
    FAILURE = "failure"
    DISABLE = "disable"
    ENABLE = "enable"


@dataclass(frozen=True, slots=True)
class HostState:
    status: HostStatus = HostStatus.UNKNOWN
    rise_cnt: int = 0            # consecutive successes not yet acted on
    fall_cnt: int = 0            # consecutive failures not yet acted on
    check_cnt: int = 0           # results counted (not while disabled)
    up_cnt: int = 0              # of which successes

    @property
    def in_transition(self) -> bool:
        return self.rise_cnt > 0 or self.fall_cnt > 0


U, UP, D, X = HostStatus.UNKNOWN, HostStatus.UP, HostStatus.DOWN, HostStatus.DISABLED
Rule = Callable[[HostState, int, int], HostState]


# Each rule builds the next state directly (the engine runs one per check,
# thousands a second: a constructor is cheaper than dataclasses.replace).

def _rise(s: HostState, rise: int, fall: int) -> HostState:
    """A success while unknown or down: up after `rise` in a row."""
    if s.rise_cnt + 1 >= rise:
        return HostState(UP, 0, 0, s.check_cnt + 1, s.up_cnt + 1)
    return HostState(s.status, s.rise_cnt + 1, 0, s.check_cnt + 1, s.up_cnt + 1)


def _fall(s: HostState, rise: int, fall: int) -> HostState:
    """A failure while up: down after `fall` in a row."""
    if s.fall_cnt + 1 >= fall:
        return HostState(D, 0, 0, s.check_cnt + 1, s.up_cnt)
    return HostState(UP, 0, s.fall_cnt + 1, s.check_cnt + 1, s.up_cnt)


def _stay_up(s: HostState, rise: int, fall: int) -> HostState:
    return HostState(UP, 0, 0, s.check_cnt + 1, s.up_cnt + 1)


def _stay_down(s: HostState, rise: int, fall: int) -> HostState:
    return HostState(D, 0, 0, s.check_cnt + 1, s.up_cnt)


def _down_now(s: HostState, rise: int, fall: int) -> HostState:
    """A failure while unknown: down at once (relayd's retry_cnt starts at 0)."""
    return HostState(D, 0, 0, s.check_cnt + 1, s.up_cnt)


def _disable(s: HostState, rise: int, fall: int) -> HostState:
    return replace(s, status=X, rise_cnt=0, fall_cnt=0)


def _enable(s: HostState, rise: int, fall: int) -> HostState:
    return replace(s, status=U, rise_cnt=0, fall_cnt=0)


def _ignore(s: HostState, rise: int, fall: int) -> HostState:
    return s


E = Event
TRANSITIONS: dict[tuple[HostStatus, Event], Rule] = {
    (U, E.SUCCESS): _rise,     (U, E.FAILURE): _down_now,
    (UP, E.SUCCESS): _stay_up, (UP, E.FAILURE): _fall,
    (D, E.SUCCESS): _rise,     (D, E.FAILURE): _stay_down,
    (X, E.SUCCESS): _ignore,   (X, E.FAILURE): _ignore,
    (U, E.DISABLE): _disable,  (UP, E.DISABLE): _disable,
    (D, E.DISABLE): _disable,  (X, E.DISABLE): _ignore,
    (U, E.ENABLE): _ignore,    (UP, E.ENABLE): _ignore,
    (D, E.ENABLE): _ignore,    (X, E.ENABLE): _enable,
}


def step(state: HostState, event: Event, *, rise: int = 1, fall: int = 1) -> HostState:
    """The state after one input (rise, fall >= 1)."""
    rise, fall = max(1, rise), max(1, fall)
    return TRANSITIONS[(state.status, event)](state, rise, fall)


def fall_count(retry: int, fall: int | None) -> int:
    """relayd's `retry N` is fall N+1; CheckOptions.fall overrides it."""
    return fall if fall is not None else retry + 1


def next_interval(state: HostState, interval: float, *, fast_interval: float | None = None,
                  down_interval: float | None = None) -> float:
    """Seconds to the next check of a host in this state."""
    if state.in_transition and fast_interval:
        return fast_interval
    if state.status == D and down_interval:
        return down_interval
    return interval


# --- state history (issue 13) ----------------------------------------------
# A host's last change, transitions and previous state live on its report
# (ipc.messages.HostRow: what show, monitor and metrics read); this is the
# one place they are updated. `now` is a parameter, as every time here.

def note_change(row, old: HostStatus, now: float) -> bool:
    """Record in `row` (a HostRow) that its status was `old` before; False,
    and nothing recorded, when it did not change."""
    if row.status == old:
        return False
    row.previous = old
    row.last_change = now
    row.transitions += 1
    return True


# --- passive failure detection (issue 15) -------------------------------------
# A full passive window with action `down`: down at once, no check counted
# (hoststated.passive decides; the host comes back only through rise).

def passive_down(s: HostState) -> HostState:
    if s.status in (UP, U):
        return HostState(D, 0, 0, s.check_cnt, s.up_cnt)
    return s


def time_in_state(last_change: float, now: float) -> float | None:
    """Seconds in the current state; None when the change time is unknown."""
    return max(0.0, now - last_change) if last_change else None
