"""A workflow whose steps run child workflows: `one` runs tests/workflows/child.py once, `each`
runs it once per item (a fan-out of children), then `total` adds their results. `fail` makes the
child with that n fail; `pause` slows each child's step (seconds), so a test can kill the parent."""

from statepipe import Workflow

wf = Workflow("parent", extra_inputs=True)


@wf.step
def one(ctx, pause: float = 0.0, fail: int = -1) -> int:
    return ctx.run_workflow("child", {"n": 10, "pause": pause, "fail": fail})


@wf.step
def items(one: int) -> list[int]:
    return [1, 2, 3]


@wf.step(map_over=items)
def each(ctx, item: int, pause: float = 0.0, fail: int = -1) -> int:
    return ctx.run_workflow("child", {"n": item, "pause": pause, "fail": fail}, key=f"item-{item}")


@wf.step
def total(one: int, each: list[int]) -> int:
    return one + sum(each)
