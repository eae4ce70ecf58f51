"""A fan-out of `n` process steps that spin on the CPU while `{dir}/hold` exists, each writing its
process's pid to `{dir}/pid-{item}-{attempt}` first and, as it ends, `ctx.stopping` to
`{dir}/unwound-{item}-{attempt}`: for cancel, pause --now and kill -9 tests."""

import os
import time
from pathlib import Path

from statepipe import RetryPolicy, StepContext, Workflow

wf = Workflow("proc_spin", retry=RetryPolicy(initial_interval=0.05))


@wf.step
def items(n: int = 1) -> list[int]:
    return list(range(int(n)))


@wf.step(map_over=items, process=True)
def spin(ctx: StepContext, item: int, dir: str) -> int:
    folder = Path(dir)
    (folder / f"pid-{item}-{ctx.attempt}").write_text(str(os.getpid()))
    ctx.progress(f"spinning in pid {os.getpid()}")
    try:
        while (folder / "hold").exists():
            until = time.monotonic() + 0.05
            while time.monotonic() < until:
                pass
    finally:  # stopped by the run, the step unwinds: this runs, and knows why
        (folder / f"unwound-{item}-{ctx.attempt}").write_text(f"stopping={ctx.stopping}")
    return item


@wf.step
def join(spin: list[int]) -> int:
    return sum(spin)
