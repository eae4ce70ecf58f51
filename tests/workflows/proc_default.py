"""`Workflow(process=True)`: plain sync steps run in processes by default; an async step, and a
step that says process=False, run in the run's process. Each returns the pid it ran in."""

import os

from statepipe import Workflow

wf = Workflow("proc_default", process=True)


@wf.step
def computed() -> int:
    return os.getpid()


@wf.step
async def awaited() -> int:
    return os.getpid()


@wf.step(process=False)
def threaded() -> int:
    return os.getpid()
