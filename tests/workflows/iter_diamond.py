"""A diamond for rerun, feedback and fork tests: root feeds left and right, join combines them,
final finishes. Every step is quick and deterministic from its inputs.

Each step output is {"v": value, "fb": ctx.feedback}, so a test sees the guidance a step got.
Steps obey three environment variables (read at run time, so a test controls one process):
ITER_TRACE=path appends "<run_id> <step>" to path each time a step body runs; ITER_FAIL=a,b makes
those steps raise; ITER_HOLD=step=path keeps that step waiting while path exists."""

import os
import time

from statepipe import Workflow

wf = Workflow("iter_diamond", description="numbers, two views of them, combined")


def enter(ctx, name):
    trace = os.environ.get("ITER_TRACE")
    if trace:
        with open(trace, "a") as f:
            f.write(f"{ctx.run_id} {name}{'[' + ctx.item + ']' if ctx.item else ''}\n")
    if name in os.environ.get("ITER_FAIL", "").split(","):
        raise RuntimeError(f"{name} was told to fail")
    hold, _, gate = os.environ.get("ITER_HOLD", "").partition("=")
    while hold == name and os.path.exists(gate):
        ctx.checkpoint()
        time.sleep(0.02)


@wf.step
def root(ctx, n: int = 3) -> dict:
    """Makes the numbers 0 to n-1."""
    enter(ctx, "root")
    return {"v": list(range(n)), "fb": ctx.feedback}


@wf.step
def left(ctx, root, factor: int = 2) -> dict:
    """Multiplies the sum of the numbers by the factor."""
    enter(ctx, "left")
    total = sum(root["v"]) * factor
    return {"v": total, "fb": ctx.feedback}


@wf.step
def right(ctx, root, label: str = "r") -> dict:
    """Writes a label with the count of the numbers."""
    enter(ctx, "right")
    return {"v": f"{label}{len(root['v'])}", "fb": ctx.feedback}


@wf.step(on_exhausted="pause")
def join(ctx, left, right) -> dict:
    """Combines the label and the product."""
    enter(ctx, "join")
    return {"v": f"{right['v']}:{left['v']}", "fb": ctx.feedback}


@wf.step
def final(ctx, join) -> dict:
    """Upper-cases the combination."""
    enter(ctx, "final")
    return {"v": join["v"].upper(), "fb": ctx.feedback}
