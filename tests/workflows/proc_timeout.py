"""A process step whose first attempt spins past its 1 s timeout and, were it still alive 3 s
after it began, would write `{dir}/side-effect`; its second attempt returns at once."""

import os
import time
from pathlib import Path

from statepipe import RetryPolicy, StepContext, Workflow

wf = Workflow("proc_timeout", retry=RetryPolicy(max_attempts=2, initial_interval=0.05))


@wf.step(process=True, timeout=1)
def slow(ctx: StepContext, dir: str) -> int:
    folder = Path(dir)
    (folder / f"pid-{ctx.attempt}").write_text(str(os.getpid()))
    if ctx.attempt == 1:
        began = time.monotonic()
        while time.monotonic() - began < 3:
            pass
        (folder / "side-effect").write_text("written by an attempt that outlived its timeout")
    return ctx.attempt
