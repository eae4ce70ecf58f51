"""A step, fan-out child or compensation as the engine tracks it while a run executes, and the
writes its attempts end with: shared by the run's executor (engine/executor.py) and the runner of
distributed children (engine/distributed.py)."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from statepipe.definition.workflow import Step
from statepipe.engine.attempt import Failure, usage_json
from statepipe.engine.context import StepContext
from statepipe.engine.outputs import decode
from statepipe.engine.threads import ThreadCall
from statepipe.lifecycles import STEP_DONE, Lifecycle
from statepipe.store.records import AttemptWrite, Change, NewEvent, StepRowWrite, utcnow
from statepipe.store.storable import mended

UNDECODED = object()  # StepState.decoded before its stored JSON is first read


@dataclass(eq=False)
class StepState:
    """A step, fan-out child or compensation as the executor tracks it; `lc` is its lifecycle."""

    step: Step
    item: str
    lc: Lifecycle
    item_index: int | None = None
    item_value: Any = None
    attempt: int = 0
    started_at: datetime | None = None
    finished_at: datetime | None = None
    error: str | None = None
    next_attempt_at: datetime | None = None
    decoded: Any = None  # the output as consumers get it, or UNDECODED (see `output`)
    stored: str | None = None  # the output's JSON as this process committed it
    children: list[StepState] = field(default_factory=list)
    undoes: StepState | None = None  # set on a compensation: the step it undoes
    previous_error: str | None = None  # the failed attempt before this one
    died: int = 0  # attempts in a row abandoned because their process died (see _recover_died)
    waiting_for: dict[str, Any] | None = None  # {name, schema, deadline}: the input it waits for
    suspended: int = 0  # attempts that stopped to wait for input: not counted by the retry policy
    overrides: dict[str, Any] | None = None  # input values a rerun set for this step
    feedback: str | None = None  # what the user asked of this step
    stale: list[StepState] = field(default_factory=list)  # children a re-expansion dropped
    # a fan-out parent's bookkeeping, so a child costs the same at 100,000 as at 1,000: the
    # children to start next in item order (None: to be listed again after a bulk change), and
    # how many succeeded (None: to be counted again)
    ready: deque[StepState] | None = None
    done: int | None = None
    limit: int | None = None  # a distributed fan-out's: its children running at once, across workers
    cache_key: str | None = None  # set on a cacheable step when its attempt starts
    ctx: StepContext | None = None
    call: ThreadCall | None = None  # a plain sync call's thread, while it runs (see _plain_call)
    began: float = 0.0

    @property
    def name(self) -> str:
        return f"{self.step.name}:compensate" if self.undoes else self.step.name

    @property
    def output(self) -> Any:
        """The output decoded from its stored JSON, so a live consumer receives exactly what one
        resumed a day later would; decoded when first needed."""
        if self.decoded is UNDECODED:
            assert self.stored is not None  # set together
            self.decoded = decode(self.stored)
        return self.decoded

    @output.setter
    def output(self, value: Any) -> None:
        self.decoded, self.stored = value, None

    def release(self) -> None:
        """Let the decoded output go, keeping its JSON: decoded, a megabyte of JSON is several
        of Python objects, which every full garbage collection walks. Read again, it is decoded
        again from the same text."""
        if self.stored is not None:
            self.decoded = UNDECODED

    @property
    def item_or_none(self) -> str | None:
        return self.item or None

    @property
    def label(self) -> str:
        return f"{self.name}[{self.item}]" if self.item else self.name

    @property
    def state(self) -> str:
        return self.lc.state

    @property
    def satisfied(self) -> bool:
        """Done as far as dependents care: succeeded, skipped, or an optional step that failed."""
        return self.state in STEP_DONE or (self.state == "failed" and self.step.optional)

    def row(self) -> StepRowWrite:
        return StepRowWrite(
            self.name, self.item, self.state, self.attempt, self.started_at, self.finished_at,
            self.error, self.next_attempt_at, self.overrides, self.feedback, self.item_index, self.waiting_for,
            self.limit,
        )

    def event(self, type_: str, **data: Any) -> NewEvent:
        return NewEvent(type_, self.name, self.item_or_none, self.attempt or None, data)


def record_attempt(
    st: StepState, change: Change, state: str, worker: str, error: str | None = None, output: str | None = None,
    cached_from: dict[str, Any] | None = None, trace: str | None = None,
) -> dict[str, Any] | None:
    """An attempt is written once, when it ends; while it runs the step row tells of it.
    Returns the attempt's LLM usage, added up (None when it made no call)."""
    usage, usage_text = usage_json(st.ctx)
    change.attempts.append(AttemptWrite(
        st.name, st.item, st.attempt, state, started_at=st.started_at or utcnow(), finished_at=st.finished_at or utcnow(),
        error=error, output=output, usage=usage_text,
        # only a computed output is a cache source: a reused one points at its origin instead
        cache_key=st.cache_key if state == "succeeded" and cached_from is None else None, cached_from=cached_from,
        traceback=mended(trace), worker=worker,
    ))
    return usage


def retrying(st: StepState, change: Change, failure: Failure, worker: str) -> None:
    """A failed attempt whose step tries again after `failure.delay`: recorded, the step waiting."""
    assert failure.delay is not None
    st.lc.send("wait")
    st.error = failure.message
    st.next_attempt_at = utcnow() + timedelta(seconds=failure.delay)
    record_attempt(st, change, "failed", worker, error=failure.message, trace=failure.trace)
    change.steps.append(st.row())
    if st.ctx is not None and st.ctx.emitted:  # readers drop this attempt's streamed text
        change.events.append(st.event("attempt_abandoned", reason=failure.message, retrying=True))
    change.events.append(st.event(
        "step_retrying", error=failure.message, **failure.located, delay_s=round(failure.delay, 3),
        next_attempt_at=st.next_attempt_at.isoformat(),
    ))


def cancelled(st: StepState, change: Change, worker: str) -> None:
    """An attempt a cancel stopped: recorded cancelled, and the step with it."""
    st.lc.send("cancel")
    st.finished_at = utcnow()
    record_attempt(st, change, "cancelled", worker, error="cancelled")
    change.steps.append(st.row())
    change.events.append(st.event("step_cancelled"))


def abandoned(st: StepState, change: Change, worker: str, reason: str, **data: Any) -> None:
    """An attempt stopped before its end (pause --now, a shutdown, its process died): recorded
    abandoned, the step pending to run again."""
    record_attempt(st, change, "abandoned", worker, error=reason)
    st.lc.send("interrupt")
    change.steps.append(st.row())
    change.events.append(st.event("attempt_abandoned", reason=reason, **data))
