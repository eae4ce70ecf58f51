"""Run and step state machines (python-statemachine): the only way a state changes."""

from statepipe.lifecycles.machines import (
    RUN_FINISHED,
    RUN_STATES,
    STEP_DONE,
    STEP_STATES,
    Lifecycle,
    RunLifecycle,
    StepLifecycle,
    run_lifecycle,
    step_lifecycle,
)

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
