"""Small workflows, one per failure-handling feature; tests load them as `policies.py:<object>`.

Each is deterministic: whether an attempt fails depends only on its attempt number and the input.
"""

import asyncio
import json
import time

from statepipe import NonRetryable, RetryPolicy, Workflow


def _append(path, record) -> None:
    if path:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record, default=str) + "\n")


class RateLimited(Exception):
    """What an HTTP client raises on a 429: it carries the server's Retry-After (seconds)."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


# -- retries: a persisted wait, resumed after a crash -------------------------------------------

waits = Workflow("waits")


@waits.step(retry=RetryPolicy(max_attempts=2, initial_interval=3.0, backoff="fixed"))
def fetch(ctx, succeed_at: int = 2) -> dict:
    """Fails until attempt `succeed_at`; 3 s between attempts, two attempts in all."""
    if ctx.attempt < succeed_at:
        raise ConnectionError(f"provider unreachable (attempt {ctx.attempt})")
    return {"attempt": ctx.attempt}


@waits.step
def use(fetch) -> str:
    return f"fetched on attempt {fetch['attempt']}"


# -- retries: backoff shapes ----------------------------------------------------------------------

backoffs = Workflow("backoffs")


def _always_failing(name: str):
    def step(ctx) -> int:
        raise ConnectionError(f"{name} attempt {ctx.attempt} failed")

    step.__name__ = name
    return step


backoffs.step(_always_failing("exponential"), optional=True,
              retry=RetryPolicy(max_attempts=4, initial_interval=0.05, backoff="exponential"))
backoffs.step(_always_failing("linear"), optional=True,
              retry=RetryPolicy(max_attempts=4, initial_interval=0.05, backoff="linear"))
backoffs.step(_always_failing("fixed"), optional=True,
              retry=RetryPolicy(max_attempts=4, initial_interval=0.05, backoff="fixed"))
backoffs.step(_always_failing("capped"), optional=True,
              retry=RetryPolicy(max_attempts=4, initial_interval=0.1, backoff="exponential", max_interval=0.15))


# -- retries: what is never retried -------------------------------------------------------------

refusals = Workflow("refusals")


@refusals.step(retries=3)
def nonretryable(ctx) -> int:
    raise NonRetryable("the provider rejected the request: invalid API key")


named = Workflow("named")


@named.step(retry=RetryPolicy(max_attempts=3, initial_interval=0.01, never_retry=(ValueError,)))
def parse(ctx) -> int:
    raise ValueError(f"cannot parse the reply (attempt {ctx.attempt})")


only_some = Workflow("only_some")


@only_some.step(retry=RetryPolicy(max_attempts=3, initial_interval=0.01, retry_on=(ConnectionError,)))
def lookup(ctx) -> int:
    raise KeyError(f"missing key (attempt {ctx.attempt})")


# -- retries: Retry-After ------------------------------------------------------------------------

hinted = Workflow("hinted")


@hinted.step(retry=RetryPolicy(max_attempts=2, initial_interval=0.01, backoff="fixed"))
def call(ctx, retry_after: float = 1.0) -> str:
    if ctx.attempt == 1:
        raise RateLimited("429 Too Many Requests", retry_after=retry_after)
    return "ok"


# -- timeouts ---------------------------------------------------------------------------------

sync_timeout = Workflow("sync_timeout")


@sync_timeout.step(timeout=0.4, retry=RetryPolicy(max_attempts=2, initial_interval=0.05, backoff="fixed"))
def slow(ctx, sleep_s: float = 6.0) -> str:
    time.sleep(sleep_s)
    return "too late"


async_timeout = Workflow("async_timeout")


@async_timeout.step(timeout=0.4, retry=RetryPolicy(max_attempts=2, initial_interval=0.05, backoff="fixed"))
async def hang_once(ctx, log: str = "") -> str:
    """Hangs on attempt 1 (and records being cancelled), answers at once on attempt 2."""
    try:
        await asyncio.sleep(6.0 if ctx.attempt == 1 else 0.01)
    except asyncio.CancelledError:
        _append(log, {"attempt": ctx.attempt, "event": "cancelled"})
        raise
    _append(log, {"attempt": ctx.attempt, "event": "finished"})
    return f"answered on attempt {ctx.attempt}"


# -- optional steps ---------------------------------------------------------------------------

optional = Workflow("optional", retry=RetryPolicy(initial_interval=0.05))


@optional.step
def base() -> int:
    return 7


@optional.step(optional=True, retries=1)
def enrich(ctx, base) -> dict:
    raise RuntimeError(f"enrichment service down (attempt {ctx.attempt})")


@optional.step
def report(base, enrich) -> dict:
    return {"base": base, "enrich": enrich}


# -- pause when retries run out -----------------------------------------------------------------

gated = Workflow("gated")


@gated.step
def prepare() -> int:
    return 1


@gated.step(on_exhausted="pause", retry=RetryPolicy(max_attempts=2, initial_interval=0.05, backoff="fixed"))
def fragile(ctx, prepare) -> str:
    """Fails on attempts 1 and 2 (the run pauses), succeeds on attempt 3 (after resume)."""
    if ctx.attempt <= 2:
        raise RuntimeError(f"fragile failed on attempt {ctx.attempt}")
    return f"fragile ok on attempt {ctx.attempt}"


@gated.step
def finish(fragile) -> str:
    return fragile.upper()


# -- run timeout ------------------------------------------------------------------------------

deadline = Workflow("deadline", timeout=1.0)


@deadline.step
def quick() -> int:
    return 1


@deadline.step
def endless(ctx, quick) -> int:
    for _ in range(600):
        ctx.checkpoint()
        time.sleep(0.05)
    return 2


# -- hooks ------------------------------------------------------------------------------------


def _hook(name: str, fail: bool = False):
    def hook(ctx, meta):
        _append(ctx.input.get("hook_log"), {"hook": name, "run_id": ctx.run_id, "workflow": ctx.workflow, "meta": meta})
        if fail:
            raise RuntimeError(f"bug in the {name} hook")

    hook.__name__ = name
    return hook


hooked = Workflow(
    "hooked",
    extra_inputs=True,  # its hooks read hook_log from ctx.input; no step takes it
    retry=RetryPolicy(max_attempts=2, initial_interval=0.05, backoff="fixed"),
    on_init=_hook("on_init"),
    on_progress=_hook("on_progress"),
    on_retry=_hook("on_retry"),
    on_error=_hook("on_error"),
    on_success=_hook("on_success", fail=True),
    on_complete=_hook("on_complete"),
)


@hooked.step
def first(ctx) -> int:
    ctx.progress("halfway")
    return 1


@hooked.step
def second(ctx, first) -> int:
    if ctx.attempt == 1:
        raise ConnectionError("second: transient failure")
    return first + 1


@hooked.step(optional=True)
def extra(ctx, first) -> int:
    raise RuntimeError("extra always fails")


@hooked.step
def last(second, extra) -> dict:
    return {"second": second, "extra": extra}
