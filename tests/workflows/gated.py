"""Three steps, the middle one held until the file `gate` exists (stopping at once when its run
is paused or cancelled meanwhile): a test steers the run while that step is surely running."""

import os
import time

from statepipe import Workflow

wf = Workflow("gated")


@wf.step
def first() -> int:
    return 1


@wf.step
def held(ctx, first: int, gate: str) -> int:
    ctx.progress("held at the gate")
    while not os.path.exists(gate):
        ctx.checkpoint()
        time.sleep(0.02)
    return first + 1


@wf.step
def last(held: int) -> int:
    return held + 1
