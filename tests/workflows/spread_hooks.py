"""A distributed fan-out with hooks, for the distributed fan-out tests: each child reports its
progress; with `fail` "flaky" item 1 fails its first attempt, with "broken" item 2 fails every
attempt. Every hook call is appended to the file `hook_log` with the pid that made it; on_progress
is an async hook."""

import asyncio
import json
import os

from statepipe import RetryPolicy, Workflow


def _log(name):
    def hook(ctx, meta):
        with open(ctx.input["hook_log"], "a") as f:
            f.write(json.dumps({"hook": name, "meta": meta, "pid": os.getpid()}) + "\n")

    return hook


async def _progressed(ctx, meta):  # an async hook: awaited on the worker's loop, not dropped
    await asyncio.sleep(0.01)
    _log("on_progress")(ctx, meta)


wf = Workflow(
    "spread_hooks",
    extra_inputs=True,  # hook_log is read by the hooks, by no step
    retry=RetryPolicy(max_attempts=2, initial_interval=0.05, backoff="fixed"),
    on_progress=_progressed,
    on_retry=_log("on_retry"),
    on_error=_log("on_error"),
)


@wf.step
def items() -> list[int]:
    return [0, 1, 2]


@wf.step(map_over=items, distribute=True)
def check(item: int, ctx, fail: str = "flaky") -> int:
    ctx.progress(f"checking {item}")
    if fail == "flaky" and item == 1 and ctx.attempt == 1:
        raise ConnectionError("item 1: transient")
    if fail == "broken" and item == 2:
        raise ValueError("item 2 is broken")
    return item
