"""Running one attempt of a step, and judging how it ended: shared by the run's executor and by
a worker running a distributed fan-out's child (engine/distributed.py), so a step behaves the
same wherever it runs."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from statepipe.definition.workflow import Step, Workflow
from statepipe.engine.context import StepContext
from statepipe.engine.outputs import summarize_usage
from statepipe.engine.threads import ThreadCall
from statepipe.engine.tracebacks import error_text, user_traceback, where
from statepipe.errors import OutputNotSerializable, StepProcessDied, StepTimeout, UnstorableValue
from statepipe.store.records import AttemptRow
from statepipe.store.storable import mended, message_json

if TYPE_CHECKING:
    from statepipe.engine.pool import ProcessPool

DIED = "the process running it died"  # why an attempt found running by a new owner or claimer was abandoned


def died_in_row(attempts: Sequence[AttemptRow]) -> int:
    """How many of a step's latest attempts, in a row, were abandoned because their process died."""
    count = 0
    for a in sorted(attempts, key=lambda a: a.number, reverse=True):
        if a.state != "abandoned" or not (a.error or "").startswith(DIED):
            break
        count += 1
    return count


def step_kwargs(
    step: Step, ctx: StepContext | None, item: Any, run_input: Mapping[str, Any], overrides: Mapping[str, Any],
    outputs: Mapping[str, Any], output_of: Callable[[str], Any],
) -> dict[str, Any]:
    """A step function's arguments by their names: an override set by a rerun, the context, the
    fan-out item, the run input, an upstream step's output (named in `outputs`, read through
    `output_of`), a run input value, else the parameter's default."""
    kwargs: dict[str, Any] = {}
    for p in step.params:
        if p.name in overrides:
            kwargs[p.name] = overrides[p.name]
        elif p.name == "ctx":
            kwargs["ctx"] = ctx
        elif p.name == "item":
            kwargs["item"] = item
        elif p.name == "input":
            kwargs["input"] = run_input
        elif p.name in outputs:
            kwargs[p.name] = output_of(p.name)
        elif p.name in run_input:
            kwargs[p.name] = run_input[p.name]
        else:
            kwargs[p.name] = p.default
    return kwargs


async def call(pool: ProcessPool, wf: Workflow, step: Step, fn: Callable[..., Any], kwargs: dict[str, Any],
               ctx: StepContext, *, is_async: bool, in_process: bool) -> Any:
    """Await the step function: in a process of the pool (its timeout and a cancel kill the
    process), as a coroutine, or on a daemon thread (one that outlives its timeout is abandoned:
    a thread cannot be stopped)."""
    if in_process:
        return await pool.run(wf, step, kwargs, ctx)
    awaitable: Any = fn(**kwargs) if is_async else ThreadCall(fn, kwargs).start()
    if step.timeout is None:
        return await awaitable
    try:
        return await asyncio.wait_for(awaitable, step.timeout)
    except asyncio.TimeoutError:
        ctx._stopped = True
        raise StepTimeout(f"timed out after {step.timeout:g}s") from None


@dataclass(frozen=True)
class Failure:
    """How a failed attempt is reported, and whether the step tries again (after `delay` s)."""

    message: str
    trace: str | None
    at: str | None
    delay: float | None  # None: no retry, the step fails

    @property
    def located(self) -> dict[str, str]:
        return {"at": self.at} if self.at else {}


def judge(wf: Workflow, step: Step, error: BaseException, tries: int) -> Failure:
    """The failure an error makes of attempt `tries` (attempts that stopped to wait for input are
    no tries): its one-line message (mended for the store), the user's traceback and where in
    their code it failed, and the retry policy's verdict."""
    plain = isinstance(error, (StepTimeout, OutputNotSerializable, StepProcessDied))
    message = mended(error_text(error, plain))  # the store mends what it stores; this copy also reaches the views
    policy = wf.policy_for(step)
    retryable = not isinstance(error, OutputNotSerializable) or isinstance(error, UnstorableValue)
    delay = policy.delay(tries, error) if retryable and policy.should_retry(tries, error) else None
    return Failure(message, user_traceback(error), where(error), delay)


def usage_json(ctx: StepContext | None) -> tuple[dict[str, Any] | None, str | None]:
    """The attempt's LLM usage added up, and as JSON for its attempt row (None: no call made)."""
    usage = summarize_usage(ctx.usage) if ctx is not None and ctx.usage else None
    return usage, message_json(usage) if usage else None
