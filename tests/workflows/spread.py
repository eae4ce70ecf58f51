"""A fan-out whose children any worker may claim (distribute=True), for the distributed fan-out
tests: each child records which process ran it, can take its time, fail its first attempt
(`flaky`), fail for good (`broken`), or mark a file while it runs (`marks`: a folder), so a
test can count how many ran at once. With SPREAD_BROKEN_HERE set the file fails to import, as a
deploy half done on one worker would."""

import os
import time
import uuid
from pathlib import Path

from statepipe import RetryPolicy, Workflow

if os.environ.get("SPREAD_BROKEN_HERE"):
    raise ImportError("spread.py: a module this worker lacks")

wf = Workflow("spread", retry=RetryPolicy(initial_interval=0.05))


@wf.step
def items(width: int = 300) -> list[int]:
    return list(range(width))


@wf.step(map_over=items, distribute=True, concurrency=8, retries=2)
def square(item: int, ctx, seconds: float = 0.0, flaky: int = -1, broken: int = -1, marks: str = "") -> dict:
    mark = Path(marks) / f"{item}-{uuid.uuid4().hex}" if marks else None
    if mark is not None:
        mark.touch()
    try:
        time.sleep(seconds)
        if item == broken:
            raise ValueError(f"item {item} is broken")
        if item == flaky and ctx.attempt == 1:
            raise ValueError(f"item {item} fails its first attempt")
        return {"n": item, "square": item * item, "pid": os.getpid()}
    finally:
        if mark is not None:
            mark.unlink()


@wf.step
def total(square: list[dict]) -> dict:
    return {"count": len(square), "sum": sum(s["square"] for s in square), "order": [s["n"] for s in square]}
