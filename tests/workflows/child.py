"""A child workflow for tests/workflows/parent.py: doubles `n` after `pause` seconds; fails when
`n` equals `fail`."""

import time

from statepipe import Workflow

wf = Workflow("child")


@wf.step
def double(n: int, pause: float = 0.0, fail: int = -1) -> int:
    time.sleep(pause)
    if n == fail:
        raise ValueError(f"child {n} was asked to fail")
    return n * 2
