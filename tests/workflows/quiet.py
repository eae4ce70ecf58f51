"""Three steps, the middle one silent for `seconds` (a long model call that streams nothing):
for what a process notices while nothing happens (a closed pipe, signals)."""

import time

from statepipe import Workflow

wf = Workflow("quiet")


@wf.step
def first() -> int:
    return 1


@wf.step
def silent(first: int, seconds: float = 10.0) -> int:
    time.sleep(seconds)
    return first + 1


@wf.step
def last(silent: int) -> int:
    return silent + 1
