"""A workflow whose second step raises: the run fails (no retries)."""

from statepipe import Workflow

wf = Workflow("failing")


@wf.step
def prepare(ctx) -> int:
    ctx.progress("preparing")
    return 41


@wf.step
def explode(ctx, prepare) -> int:
    ctx.emit("about to fail\n")
    raise RuntimeError(f"boom after {prepare}")
