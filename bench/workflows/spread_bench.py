"""The same fan-out twice, one after the other: in-process (`local`), then claimable by any
worker (`spread`), for bench/distributed.py. `burn_ms` makes each child compute that long
(0: trivial children)."""

import time

from statepipe import Workflow

wf = Workflow("spread_bench", max_concurrency=64)


def work(item: int, burn_ms: float) -> int:
    end = time.thread_time() + burn_ms / 1000  # this thread's CPU time: its siblings' does not count
    while time.thread_time() < end:
        pass
    return item * 2


@wf.step
def items(width: int = 1000) -> list[int]:
    return list(range(width))


@wf.step(map_over=items, concurrency=64)
def local(item: int, burn_ms: float = 0.0) -> int:
    return work(item, burn_ms)


@wf.step(map_over=items, concurrency=64, distribute=True, after=[local])
def spread(item: int, burn_ms: float = 0.0) -> int:
    return work(item, burn_ms)


@wf.step
def join(local: list[int], spread: list[int]) -> bool:
    return local == spread
