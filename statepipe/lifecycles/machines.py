"""The run and step lifecycles. Every state change in statepipe is an event sent to one of these
machines; the engine writes the machine's new state, never a state it computed itself."""

from __future__ import annotations

import threading

from statemachine import State, StateMachine
from statemachine.exceptions import TransitionNotAllowed
from statemachine.states import States

from statepipe.errors import IllegalTransition
from statepipe.lifecycles.states import RUN_FINISHED, RUN_STATES, STEP_STATES


def _states(names: tuple[str, ...]) -> States:
    """A machine's states, from the names states.py lists (the first is the initial one): each
    state's id and value are its name."""
    return States({name: State(initial=name == names[0], value=name) for name in names})


class RunLifecycle(StateMachine):
    """pending -> running -> succeeded | failed | cancelled; running <-> paused; running <->
    waiting (a step waits for a person's input: nobody executes the run meanwhile).

    No state is final: a finished run can be reopened (rerun, resume of a failed run)."""

    s = _states(RUN_STATES)

    start = s.pending.to(s.running)
    pause = s.running.to(s.paused) | s.pending.to(s.paused) | s.waiting.to(s.paused)
    unpause = s.paused.to(s.running)
    await_input = s.running.to(s.waiting)
    wake = s.waiting.to(s.running)
    succeed = s.running.to(s.succeeded)
    fail = s.running.to(s.failed)
    cancel = s.pending.to(s.cancelled) | s.running.to(s.cancelled) | s.paused.to(s.cancelled) | s.waiting.to(s.cancelled)
    reopen = s.failed.to(s.running) | s.succeeded.to(s.running) | s.cancelled.to(s.running)


class StepLifecycle(StateMachine):
    """pending -> running -> succeeded | failed | waiting (for a retry) ; pending -> skipped.

    `interrupt` returns an in-flight attempt's step to pending (its process died or was paused);
    `reset` reopens a finished step when a user invalidates it."""

    s = _states(STEP_STATES)

    start = s.pending.to(s.running) | s.waiting.to(s.running)
    succeed = s.running.to(s.succeeded)
    fail = s.running.to(s.failed) | s.waiting.to(s.failed)
    wait = s.running.to(s.waiting)
    skip = s.pending.to(s.skipped)
    interrupt = s.running.to(s.pending)
    cancel = s.pending.to(s.cancelled) | s.running.to(s.cancelled) | s.waiting.to(s.cancelled)
    reset = s.succeeded.to(s.pending) | s.failed.to(s.pending) | s.skipped.to(s.pending) | s.cancelled.to(s.pending)


# RUN_FINISHED too, as before the names moved to states.py: `statepipe prune` imports it from here
__all__ = ["RUN_FINISHED", "Lifecycle", "RunLifecycle", "StepLifecycle", "run_lifecycle", "step_lifecycle"]


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
