"""The run and step lifecycles: the only way a state changes.

The two tables below ARE the documentation of the lifecycles: every (state, event) pair they list
is allowed and lands in the state given; every other pair raises IllegalTransition and leaves the
state as it was. The tests walk the whole state x event product, so a transition added to or
removed from the machines without updating these tables fails here.
"""

from __future__ import annotations

import itertools

import pytest

from statepipe.errors import IllegalTransition, StatepipeError
from statepipe.lifecycles import (
    RUN_FINISHED,
    RUN_STATES,
    STEP_DONE,
    STEP_STATES,
    RunLifecycle,
    StepLifecycle,
    run_lifecycle,
    step_lifecycle,
)

# -- the run lifecycle ---------------------------------------------------------------------------
#
#   pending --start--> running --succeed--> succeeded
#                         |  ^  \--fail---> failed
#                   pause |  | unpause
#                         v  |
#                        paused
#   pending/running/paused --cancel--> cancelled
#   pending --pause--> paused (held before it ever started)
#   succeeded/failed/cancelled --reopen--> running (resume of a failed run, rerun)

RUN_STATES_DOC = ["pending", "running", "paused", "waiting", "succeeded", "failed", "cancelled"]
RUN_EVENTS_DOC = ["start", "pause", "unpause", "await_input", "wake", "succeed", "fail", "cancel", "reopen"]

RUN_TABLE: dict[tuple[str, str], str] = {
    ("pending", "start"): "running",
    ("pending", "pause"): "paused",
    ("pending", "cancel"): "cancelled",
    ("running", "pause"): "paused",
    ("running", "succeed"): "succeeded",
    ("running", "fail"): "failed",
    ("running", "cancel"): "cancelled",
    ("paused", "unpause"): "running",
    ("paused", "cancel"): "cancelled",
    ("running", "await_input"): "waiting",  # a step waits for a person's input: nobody executes the run
    ("waiting", "wake"): "running",
    ("waiting", "pause"): "paused",
    ("waiting", "cancel"): "cancelled",
    ("succeeded", "reopen"): "running",
    ("failed", "reopen"): "running",
    ("cancelled", "reopen"): "running",
}

# -- the step lifecycle --------------------------------------------------------------------------
#
#   pending --start--> running --succeed--> succeeded
#      |                 |  \--fail-----> failed
#      | skip            |  \--wait-----> waiting --start--> running (the retry)
#      v                 |                   \--fail--> failed
#   skipped              \--interrupt--> pending (its process died or was stopped)
#   pending/running/waiting --cancel--> cancelled
#   succeeded/failed/skipped/cancelled --reset--> pending (a user invalidated it)

STEP_STATES_DOC = ["pending", "running", "waiting", "succeeded", "failed", "skipped", "cancelled"]
STEP_EVENTS_DOC = ["start", "succeed", "fail", "wait", "skip", "interrupt", "cancel", "reset"]

STEP_TABLE: dict[tuple[str, str], str] = {
    ("pending", "start"): "running",
    ("pending", "skip"): "skipped",
    ("pending", "cancel"): "cancelled",
    ("running", "succeed"): "succeeded",
    ("running", "fail"): "failed",
    ("running", "wait"): "waiting",
    ("running", "interrupt"): "pending",
    ("running", "cancel"): "cancelled",
    ("waiting", "start"): "running",
    ("waiting", "fail"): "failed",
    ("waiting", "cancel"): "cancelled",
    ("succeeded", "reset"): "pending",
    ("failed", "reset"): "pending",
    ("skipped", "reset"): "pending",
    ("cancelled", "reset"): "pending",
}

RUN_PAIRS = list(itertools.product(RUN_STATES_DOC, RUN_EVENTS_DOC))
STEP_PAIRS = list(itertools.product(STEP_STATES_DOC, STEP_EVENTS_DOC))


def _ids(pairs: list[tuple[str, str]]) -> list[str]:
    return [f"{state}-{event}" for state, event in pairs]


# -- the vocabulary ------------------------------------------------------------------------------


def test_run_states_are_the_documented_lower_case_words():
    assert list(RUN_STATES) == RUN_STATES_DOC
    assert RUN_FINISHED == ("succeeded", "failed", "cancelled")


def test_step_states_are_the_documented_lower_case_words():
    assert list(STEP_STATES) == STEP_STATES_DOC
    assert STEP_DONE == ("succeeded", "skipped")


def test_run_machine_has_exactly_the_documented_events():
    assert sorted(e.id for e in RunLifecycle.events) == sorted(RUN_EVENTS_DOC)


def test_step_machine_has_exactly_the_documented_events():
    assert sorted(e.id for e in StepLifecycle.events) == sorted(STEP_EVENTS_DOC)


def test_new_runs_and_steps_start_pending():
    assert [s.value for s in RunLifecycle.states if s.initial] == ["pending"]
    assert [s.value for s in StepLifecycle.states if s.initial] == ["pending"]


def test_no_state_is_final_so_finished_runs_and_steps_can_be_reopened():
    assert [s.value for s in RunLifecycle.states if s.final] == []
    assert [s.value for s in StepLifecycle.states if s.final] == []


# -- the run lifecycle, pair by pair -------------------------------------------------------------


@pytest.mark.parametrize(("state", "event"), [p for p in RUN_PAIRS if p in RUN_TABLE], ids=_ids([p for p in RUN_PAIRS if p in RUN_TABLE]))
def test_allowed_run_transition_lands_in_documented_state(state, event):
    lc = run_lifecycle(state, "r1")
    assert lc.can(event)
    assert lc.send(event) == RUN_TABLE[(state, event)]
    assert lc.state == RUN_TABLE[(state, event)]


@pytest.mark.parametrize(("state", "event"), [p for p in RUN_PAIRS if p not in RUN_TABLE], ids=_ids([p for p in RUN_PAIRS if p not in RUN_TABLE]))
def test_illegal_run_transition_raises_and_changes_nothing(state, event):
    lc = run_lifecycle(state, "r1")
    assert not lc.can(event)
    with pytest.raises(IllegalTransition) as info:
        lc.send(event)
    assert lc.state == state
    assert str(info.value) == f"run r1: cannot {event} when {state}"


# -- the step lifecycle, pair by pair ------------------------------------------------------------


@pytest.mark.parametrize(("state", "event"), [p for p in STEP_PAIRS if p in STEP_TABLE], ids=_ids([p for p in STEP_PAIRS if p in STEP_TABLE]))
def test_allowed_step_transition_lands_in_documented_state(state, event):
    lc = step_lifecycle(state, "fan[3]")
    assert lc.can(event)
    assert lc.send(event) == STEP_TABLE[(state, event)]
    assert lc.state == STEP_TABLE[(state, event)]


@pytest.mark.parametrize(("state", "event"), [p for p in STEP_PAIRS if p not in STEP_TABLE], ids=_ids([p for p in STEP_PAIRS if p not in STEP_TABLE]))
def test_illegal_step_transition_raises_and_changes_nothing(state, event):
    lc = step_lifecycle(state, "fan[3]")
    assert not lc.can(event)
    with pytest.raises(IllegalTransition) as info:
        lc.send(event)
    assert lc.state == state
    assert str(info.value) == f"step fan[3]: cannot {event} when {state}"


# -- the edges of the machines -------------------------------------------------------------------


def test_unknown_event_is_refused_as_illegal():
    with pytest.raises(IllegalTransition, match="cannot explode when running"):
        run_lifecycle("running").send("explode")
    with pytest.raises(IllegalTransition, match="cannot explode when pending"):
        step_lifecycle("pending").send("explode")


@pytest.mark.parametrize("state", ["done", "RUNNING", "", "interrupted"])
def test_unknown_run_state_is_refused(state):
    # "interrupted" is shown, derived from the lease, never stored
    with pytest.raises(IllegalTransition, match="unknown state"):
        run_lifecycle(state)


@pytest.mark.parametrize("state", ["done", "paused", "abandoned"])
def test_unknown_step_state_is_refused(state):
    with pytest.raises(IllegalTransition, match="unknown state"):
        step_lifecycle(state)


def test_illegal_transition_is_a_user_facing_error():
    # the CLI prints StatepipeErrors as one line, never a traceback
    assert issubclass(IllegalTransition, StatepipeError)


def test_a_step_retried_twice_then_succeeding_walks_the_table():
    lc = step_lifecycle("pending")
    path = [lc.send(e) for e in ("start", "wait", "start", "wait", "start", "succeed")]
    assert path == ["running", "waiting", "running", "waiting", "running", "succeeded"]


def test_a_crashed_attempt_returns_the_step_to_pending_for_a_new_attempt():
    lc = step_lifecycle("running")
    assert [lc.send(e) for e in ("interrupt", "start", "succeed")] == ["pending", "running", "succeeded"]
