"""Run and step state machines (python-statemachine): the only way a state changes.

The states' names (states.py, plain tuples) come with the package; the machines (machines.py)
are imported when one of their names is first asked for, so `list --status` checks its filter
against RUN_STATES without importing python-statemachine (15-30 ms of the command's 0.3 s)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from statepipe.lifecycles.states import RUN_FINISHED, RUN_STATES, STEP_DONE, STEP_STATES

if TYPE_CHECKING:
    from statepipe.lifecycles.machines import Lifecycle, RunLifecycle, StepLifecycle, run_lifecycle, step_lifecycle

__all__ = [
    "RUN_FINISHED",
    "RUN_STATES",
    "STEP_DONE",
    "STEP_STATES",
    "Lifecycle",
    "RunLifecycle",
    "StepLifecycle",
    "run_lifecycle",
    "step_lifecycle",
]


def __getattr__(name: str) -> Any:
    """The machines' names (those of __all__ not bound above), from machines.py, imported now."""
    if name in __all__:
        from statepipe.lifecycles import machines

        return getattr(machines, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
