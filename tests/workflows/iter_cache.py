"""Cross-run caching: every step opts in through the workflow's cache=True. Each step body
appends "<run_id> <step>" to the file named by ITER_TRACE, so a test can prove a cached step did
not execute. `short` keeps its cached output for 1.5 seconds only."""

import os

from statepipe import Workflow

wf = Workflow("iter_cache", cache=True)


def enter(ctx, name):
    trace = os.environ.get("ITER_TRACE")
    if trace:
        with open(trace, "a") as f:
            f.write(f"{ctx.run_id} {name}\n")


@wf.step(version="1")
def base(ctx, x: int = 1) -> int:
    """Ten times x."""
    enter(ctx, "base")
    return x * 10


@wf.step
def use(ctx, base) -> int:
    """One more than base."""
    enter(ctx, "use")
    return base + 1


@wf.step(cache_ttl=1.5)
def short(ctx, x: int = 1) -> int:
    """x plus one hundred, cached for 1.5 seconds."""
    enter(ctx, "short")
    return x + 100
