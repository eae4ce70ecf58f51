"""A fan-out of `width` trivial children, 64 at a time, and a join that sums their outputs: the
engine's own cost at scale (issue 17's kill -9 test)."""

from statepipe import Workflow

wf = Workflow("wide_trivial", max_concurrency=64)


@wf.step
def items(width: int = 20_000) -> list[int]:
    return list(range(width))


@wf.step(map_over=items, concurrency=64)
def child(item: int) -> int:
    return item * 2


@wf.step
def join(child: list[int]) -> int:
    return sum(child)
