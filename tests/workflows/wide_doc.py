"""A wide fan-out for reading a run at scale (issue 17): one child per item, every 97th failing
its first attempt (so it has two) and item `fail` every time, outputs holding what JSON writers
disagree on (floats json writes with an exponent, integers past 64 bits, text beyond ASCII,
nested values)."""

from statepipe import RetryPolicy, Workflow

wf = Workflow("wide_doc", max_concurrency=32)


@wf.step
def items(width: int = 1200) -> list[int]:
    return list(range(width))


@wf.step(map_over=items, retry=RetryPolicy(max_attempts=2, initial_interval=0))
def child(ctx, item: int, fail: int = -1) -> dict:
    if item == fail:
        raise RuntimeError(f"item {item} always fails")
    if item % 97 == 1 and ctx.attempt == 1:
        raise ValueError(f"first try of {item}")
    return {"n": item, "tiny": item * 1e-7, "big": 2**70 + item, "text": f"é {item}", "nested": {"list": [item, None, True]}}


@wf.step
def join(child: list) -> int:
    return sum(c["n"] for c in child)
