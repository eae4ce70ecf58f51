"""A workflow for crash tests: parallel branches, a fan-out, streaming output, a join.

Every step is deterministic from the input and takes `pause` seconds, so a test can kill the
process during a step, between steps or in the middle of the fan-out."""

import time

from statepipe import Workflow

wf = Workflow("crashy", max_concurrency=8)


def _work(ctx, pause: float, label: str) -> None:
    for i in range(4):
        ctx.emit(f"{label} part {i}\n")
        time.sleep(pause / 4)


@wf.step
def seed(ctx, items: int = 6, pause: float = 0.2) -> list[dict]:
    _work(ctx, pause, "seed")
    return [{"n": i, "label": f"item-{i}"} for i in range(items)]


@wf.step
def left(ctx, seed, pause: float = 0.2) -> int:
    _work(ctx, pause, "left")
    return sum(x["n"] for x in seed)


@wf.step
def right(ctx, seed, pause: float = 0.2) -> str:
    _work(ctx, pause, "right")
    return "-".join(x["label"] for x in seed)


@wf.step(map_over=seed, concurrency=3)
def fan(ctx, item, pause: float = 0.2) -> dict:
    _work(ctx, pause, f"fan {item['n']}")
    return {"n": item["n"], "square": item["n"] ** 2}


@wf.step
def join(ctx, fan, left, right, pause: float = 0.2) -> dict:
    _work(ctx, pause, "join")
    return {"squares": [f["square"] for f in fan], "left": left, "right": right}


@wf.step
def final(ctx, join, pause: float = 0.2) -> dict:
    _work(ctx, pause, "final")
    return {"total": sum(join["squares"]) + join["left"], "right": join["right"]}
