"""For bench/dashboard_page.py: one fan-out of `items` children (10,000 by default), each a
little work and a line of streamed output, between a seed and a join."""

import time

from statepipe import Workflow

wf = Workflow("wide", max_concurrency=16)


@wf.step
def seed(items: int = 10_000) -> list[int]:
    return list(range(items))


@wf.step(map_over=seed, concurrency=16)
def child(ctx, item: int, pause: float = 0.0) -> dict:
    ctx.emit(f"child {item}\n")
    if pause:
        time.sleep(pause)
    return {"n": item, "square": item * item}


@wf.step
def join(child: list[dict]) -> int:
    return sum(c["square"] for c in child)
