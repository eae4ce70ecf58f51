"""One model call from a step: limits, backoff honouring Retry-After, fallbacks, usage, and the
streamed deltas turned into events of the step's current attempt.

Backoff happens inside the call only while nothing has streamed yet; once text has been emitted
a failure ends the attempt, so a retry's text is never mixed into the failed attempt's."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import tenacity

from statepipe.engine.context import StepContext
from statepipe.errors import NonRetryable, StatepipeError
from statepipe.llm.backends import (
    SIMULATED,
    Refused,
    Reply,
    Shape,
    Transient,
    client,
    openai_stream,
    simulated_stream,
)
from statepipe.llm.limits import admitted
from statepipe.llm.models import ModelConfig, model_config

TRIES_PER_MODEL = 4
TEXT = Shape()
ON_TRUNCATED = ("keep", "retry")


class MissingAPIKey(NonRetryable, StatepipeError):
    """The model needs a key that is not in the environment."""


class ReplyTruncated(StatepipeError):
    """The reply was cut at the token limit and the step asked for a retry in that case."""

    exit_code = 1


class ModelUnavailable(StatepipeError):
    """Every model in the chain kept failing; the step's retry policy decides what next."""

    exit_code = 1

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def _wait(state: tenacity.RetryCallState) -> float:
    exc = state.outcome.exception() if state.outcome else None
    hint = getattr(exc, "retry_after", None)
    backoff = min(8.0, 0.5 * 2 ** (state.attempt_number - 1))
    return float(hint) if isinstance(hint, (int, float)) and hint > 0 else backoff


def call(
    ctx: StepContext,
    messages: list[dict[str, Any]],
    *,
    model: str,
    params: dict[str, Any],
    shape: Shape = TEXT,
    on_delta: Callable[[str], None] | None = None,
    on_truncated: str = "keep",
) -> Reply:
    """Call `model` (then its fallbacks), stream deltas to `on_delta`, record usage on `ctx`.
    A reply cut at the token limit is kept, marked truncated, or with on_truncated="retry" fails
    the attempt so the step's retry policy applies."""
    if on_truncated not in ON_TRUNCATED:
        raise NonRetryable(f"on_truncated must be one of {', '.join(ON_TRUNCATED)}, not {on_truncated!r}")
    first = model_config(model)
    chain = [first, *(model_config(m) for m in first.fallbacks)]
    last: Transient | None = None
    for i, cfg in enumerate(chain):
        if not ctx.dry_run and not cfg.key():
            raise MissingAPIKey(f"model {cfg.name} needs {cfg.api_key_env}; set it, or run with --dry-run")
        streamed = [False]
        fallback_from = model if i else None

        def once(cfg: ModelConfig = cfg, streamed: list[bool] = streamed, fallback_from: str | None = fallback_from) -> Reply:
            return _one(ctx, cfg, messages, params, shape, on_delta, streamed, fallback_from=fallback_from, on_truncated=on_truncated)

        def transient(e: BaseException, streamed: list[bool] = streamed) -> bool:
            return isinstance(e, Transient) and not streamed[0]

        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception(transient),
            wait=_wait,
            stop=tenacity.stop_after_attempt(TRIES_PER_MODEL),
            reraise=True,
            # a Transient's message names its model already
            before_sleep=lambda st: ctx.progress(
                f"{st.outcome.exception() if st.outcome else ''}; waiting {st.upcoming_sleep:.1f}s", retrying=True,
            ),
        )
        try:
            return retrying(once)
        except Transient as exc:
            if streamed[0]:
                raise ModelUnavailable(str(exc), exc.retry_after) from exc
            last = exc
            if i + 1 < len(chain):
                ctx.progress(f"{exc}; falling back to {chain[i + 1].name}", fallback=chain[i + 1].name)
    assert last is not None
    raise ModelUnavailable(f"{model} and its fallbacks are unavailable: {last}", last.retry_after) from last


def _one(
    ctx: StepContext,
    cfg: ModelConfig,
    messages: list[dict[str, Any]],
    params: dict[str, Any],
    shape: Shape,
    on_delta: Callable[[str], None] | None,
    streamed: list[bool],
    fallback_from: str | None,
    on_truncated: str,
) -> Reply:
    estimate = sum(len(str(m.get("content") or "")) for m in messages) // 4 + int(params.get("max_tokens") or 512)
    if not ctx.dry_run:
        client(cfg)  # import and connect-pool set-up are not the model's time to first token
    with admitted(cfg, estimate, on_wait=ctx.progress) as waited:
        began = time.monotonic()
        first: float | None = None
        source: Iterator[str | Reply] = (
            simulated_stream(cfg, messages, params, shape) if ctx.dry_run else openai_stream(cfg, messages, params)
        )
        try:
            for piece in source:
                if isinstance(piece, Reply):
                    reply = piece
                    break
                if first is None:
                    first = time.monotonic()
                streamed[0] = True
                if on_delta is not None:
                    on_delta(piece)
            else:
                raise Transient(f"{cfg.name}: the stream ended without a reply")
        except Refused as exc:
            raise NonRetryable(str(exc)) from exc
    latency = time.monotonic() - began
    truncated = reply.finish_reason == "length"
    ctx.record_usage({
        "model": reply.model if not ctx.dry_run else SIMULATED,
        "requested_model": cfg.name,
        "simulated": ctx.dry_run,
        "prompt_tokens": reply.prompt_tokens,
        "completion_tokens": reply.completion_tokens,
        "total_tokens": reply.prompt_tokens + reply.completion_tokens,
        "cost_usd": 0.0 if ctx.dry_run else round(cfg.cost(reply.prompt_tokens, reply.completion_tokens), 8),
        "latency_s": round(latency, 4),
        "ttft_s": round(first - began, 4) if first is not None else None,
        "waited_s": round(waited, 4),
        "fallback_from": fallback_from,
        "finish_reason": reply.finish_reason,
        "truncated": truncated,
    })
    if truncated:
        size = f"{reply.completion_tokens} tokens" if reply.completion_tokens else f"{len(reply.text)} characters"
        cut = f"{cfg.name}: reply cut at the token limit after {size} (finish_reason \"length\")"
        if on_truncated == "retry":
            raise ReplyTruncated(cut)
        ctx.progress(f"{cut}; kept, marked truncated", truncated=True)
    return reply
