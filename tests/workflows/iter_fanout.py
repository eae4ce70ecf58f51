"""A fan-out for `rerun --item`: items -> fan (one child per key) -> join, with a sibling
branch (side) that is not downstream of the fan-out. Quick and deterministic."""

import os

from statepipe import Workflow

wf = Workflow("iter_fanout")


def enter(ctx, name):
    trace = os.environ.get("ITER_TRACE")
    if trace:
        with open(trace, "a") as f:
            f.write(f"{ctx.run_id} {name}{'[' + ctx.item + ']' if ctx.item else ''}\n")


@wf.step
def items(ctx, keys: list = ["a", "b", "c"]) -> list:
    """One record per key."""
    enter(ctx, "items")
    return [{"key": k, "n": i + 1} for i, k in enumerate(keys)]


@wf.step
def side(ctx, items) -> int:
    """Counts the records."""
    enter(ctx, "side")
    return len(items)


@wf.step(map_over=items, item_key=lambda it: it["key"])
def fan(ctx, item, scale: int = 1) -> dict:
    """Squares each record's number."""
    enter(ctx, "fan")
    return {"key": item["key"], "sq": item["n"] ** 2 * scale, "fb": ctx.feedback}


@wf.step
def join(ctx, fan, side) -> dict:
    """Sums the squares."""
    enter(ctx, "join")
    return {"total": sum(f["sq"] for f in fan), "count": side}
