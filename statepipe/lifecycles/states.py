"""The run and step states by name, as plain tuples: the machines (machines.py) are built from
them, and what only needs the names (`list --status` checking its filter) imports them without
python-statemachine, whose import is 15-30 ms of a command's 0.3 s."""

RUN_STATES = ("pending", "running", "paused", "waiting", "succeeded", "failed", "cancelled")
STEP_STATES = ("pending", "running", "waiting", "succeeded", "failed", "skipped", "cancelled")
RUN_FINISHED = ("succeeded", "failed", "cancelled")
STEP_DONE = ("succeeded", "skipped")
