"""The run and step lifecycles. Every state change in statepipe is an event sent to one of these
machines; the engine writes the machine's new state, never a state it computed itself."""

from __future__ import annotations

import threading

from statemachine import State, StateMachine
from statemachine.exceptions import TransitionNotAllowed

from statepipe.errors import IllegalTransition


class RunLifecycle(StateMachine):
    """pending -> running -> succeeded | failed | cancelled; running <-> paused; running <->
    waiting (a step waits for a person's input: nobody executes the run meanwhile).

    No state is final: a finished run can be reopened (rerun, resume of a failed run)."""

    pending = State(initial=True, value="pending")
    running = State(value="running")
    paused = State(value="paused")
    waiting = State(value="waiting")
    succeeded = State(value="succeeded")
    failed = State(value="failed")
    cancelled = State(value="cancelled")

    start = pending.to(running)
    pause = running.to(paused) | pending.to(paused) | waiting.to(paused)
    unpause = paused.to(running)
    await_input = running.to(waiting)
    wake = waiting.to(running)
    succeed = running.to(succeeded)
    fail = running.to(failed)
    cancel = pending.to(cancelled) | running.to(cancelled) | paused.to(cancelled) | waiting.to(cancelled)
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


class _Decider:
    """Answers "from this state, what does this event lead to?" by asking the machine.

    Both lifecycles are pure (no guards, no actions), so the answer depends only on (state,
    event): each pair is sent through the python-statemachine machine once per process and the
    answer kept. That keeps the machines the single authority on transitions while a step
    transition on the hot path costs a dictionary lookup instead of ~90 us of machine engine."""

    def __init__(self, machine: type[StateMachine]) -> None:
        self._holder = _Holder(machine.initial_state.value)
        self._machine = machine(model=self._holder, state_field="state")
        self._answers: dict[tuple[str, str], str | None] = {}
        self._lock = threading.Lock()
        self.states = frozenset(s.value for s in machine.states)

    def target(self, state: str, event: str) -> str | None:
        key = (state, event)
        try:
            return self._answers[key]
        except KeyError:
            pass
        with self._lock:
            self._holder.state = state
            try:
                self._machine.send(event)
            except TransitionNotAllowed:
                answer = None
            else:
                answer = self._holder.state
            self._answers[key] = answer
        return answer


_DECIDERS: dict[type[StateMachine], _Decider] = {}


def _decider(machine: type[StateMachine]) -> _Decider:
    if machine not in _DECIDERS:
        _DECIDERS[machine] = _Decider(machine)
    return _DECIDERS[machine]


class Lifecycle:
    """The state of one run or step; `send` moves it as its machine allows, or raises
    IllegalTransition naming what was refused."""

    __slots__ = ("_decider", "state", "_what")

    def __init__(self, machine: type[StateMachine], state: str, what: str) -> None:
        self._decider = _decider(machine)
        if state not in self._decider.states:
            raise IllegalTransition(f"{what}: unknown state {state!r}")
        self.state = state  # read on every scheduling pass: a plain attribute, written only by send
        self._what = what

    def send(self, event: str) -> str:
        target = self._decider.target(self.state, event)
        if target is None:
            raise IllegalTransition(f"{self._what}: cannot {event} when {self.state}")
        self.state = target
        return target

    def can(self, event: str) -> bool:
        return self._decider.target(self.state, event) is not None


def run_lifecycle(state: str, run_id: str = "run") -> Lifecycle:
    return Lifecycle(RunLifecycle, state, f"run {run_id}")


def step_lifecycle(state: str, key: str = "step") -> Lifecycle:
    return Lifecycle(StepLifecycle, state, f"step {key}")
