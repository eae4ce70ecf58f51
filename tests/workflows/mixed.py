"""A sync step and an async step feeding one join."""

import asyncio

from statepipe import Workflow

wf = Workflow("mixed")


@wf.step
def plain(x: int = 2) -> int:
    return x * 10


@wf.step
async def awaited(ctx, x: int = 2) -> int:
    await asyncio.sleep(0.01)
    ctx.progress("slept")
    return x + 1


@wf.step
def both(plain, awaited) -> list:
    return [plain, awaited]
