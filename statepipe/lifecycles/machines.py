"""The run and step lifecycles. Every state change in statepipe is an event sent to one of these
machines; the engine writes the machine's new state, never a state it computed itself."""

from __future__ import annotations

from typing import Any

from statemachine import State, StateMachine
from statemachine.exceptions import TransitionNotAllowed

from statepipe.errors import IllegalTransition


class RunLifecycle(StateMachine):
    """pending -> running -> succeeded | failed | cancelled; running <-> paused.

    No state is final: a finished run can be reopened (rerun, resume of a failed run)."""

    pending = State(initial=True, value="pending")
    running = State(value="running")
    paused = State(value="paused")
    succeeded = State(value="succeeded")
    failed = State(value="failed")
    cancelled = State(value="cancelled")

    start = pending.to(running)
    pause = running.to(paused) | pending.to(paused)
    unpause = paused.to(running)
    succeed = running.to(succeeded)
    fail = running.to(failed)
    cancel = pending.to(cancelled) | running.to(cancelled) | paused.to(cancelled)
    reopen = failed.to(running) | succeeded.to(running) | cancelled.to(running)


class StepLifecycle(StateMachine):
    """pending -> running -> succeeded | failed | waiting (for a retry) ; pending -> skipped.

    `interrupt` returns an in-flight attempt's step to pending (its process died or was paused);
    `reset` reopens a finished step when a user invalidates it."""

    pending = State(initial=True, value="pending")
    running = State(value="running")
    waiting = State(value="waiting")
    succeeded = State(value="succeeded")
    failed = State(value="failed")
    skipped = State(value="skipped")
    cancelled = State(value="cancelled")

    start = pending.to(running) | waiting.to(running)
    succeed = running.to(succeeded)
    fail = running.to(failed) | waiting.to(failed)
    wait = running.to(waiting)
    skip = pending.to(skipped)
    interrupt = running.to(pending)
    cancel = pending.to(cancelled) | running.to(cancelled) | waiting.to(cancelled)
    reset = succeeded.to(pending) | failed.to(pending) | skipped.to(pending) | cancelled.to(pending)


RUN_STATES = tuple(s.value for s in RunLifecycle.states)
STEP_STATES = tuple(s.value for s in StepLifecycle.states)
RUN_FINISHED = ("succeeded", "failed", "cancelled")
STEP_DONE = ("succeeded", "skipped")


class _Holder:
    """Model object the machine reads and writes its state through."""

    __slots__ = ("state",)

    def __init__(self, state: str) -> None:
        self.state = state


class Lifecycle:
    """One machine bound to one run or step; `send` returns the new state or raises
    IllegalTransition naming what was refused."""

    def __init__(self, machine: type[StateMachine], state: str, what: str) -> None:
        if state not in {s.value for s in machine.states}:
            raise IllegalTransition(f"{what}: unknown state {state!r}")
        self._holder = _Holder(state)
        self._machine = machine(model=self._holder, state_field="state")
        self._what = what

    @property
    def state(self) -> str:
        return self._holder.state

    def send(self, event: str, **kwargs: Any) -> str:
        before = self._holder.state
        try:
            self._machine.send(event, **kwargs)
        except TransitionNotAllowed as exc:
            raise IllegalTransition(f"{self._what}: cannot {event} when {before}") from exc
        return self._holder.state

    def can(self, event: str) -> bool:
        return any(e.id == event for e in self._machine.allowed_events)


def run_lifecycle(state: str, run_id: str = "run") -> Lifecycle:
    return Lifecycle(RunLifecycle, state, f"run {run_id}")


def step_lifecycle(state: str, key: str = "step") -> Lifecycle:
    return Lifecycle(StepLifecycle, state, f"step {key}")
