"""Executing one run: find ready steps, commit their transitions, run them, commit the outcome.

Each round commits one Change holding every transition it decided (steps finished, steps
started, fan-outs expanded, the run finished), then launches the steps it started: so a step's
output is durable before any step that consumes it begins, and a crash at any instant leaves
the store in a state `resume` continues from."""

from __future__ import annotations

import asyncio
import inspect
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from statepipe.definition.workflow import Step, Workflow
from statepipe.engine.context import StepContext, StepInterrupted
from statepipe.engine.outputs import encode, summarize
from statepipe.errors import (
    ConflictError,
    LeaseLost,
    NonRetryable,
    OutputNotSerializable,
    StepTimeout,
)
from statepipe.lifecycles import STEP_DONE, Lifecycle, run_lifecycle, step_lifecycle
from statepipe.store.records import (
    AttemptWrite,
    Change,
    NewEvent,
    NewStepRow,
    RunSnapshot,
    RunWrite,
    StepRow,
    StepRowWrite,
    utcnow,
)

if TYPE_CHECKING:
    from statepipe.engine.runtime import Runtime


@dataclass(eq=False)
class StepState:
    """A step (or fan-out child) as the executor tracks it; `lc` is its lifecycle."""

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
    output: Any = None
    children: list[StepState] = field(default_factory=list)
    ctx: StepContext | None = None
    began: float = 0.0

    @property
    def name(self) -> str:
        return self.step.name

    @property
    def item_or_none(self) -> str | None:
        return self.item or None

    @property
    def label(self) -> str:
        return f"{self.name}[{self.item}]" if self.item else self.name

    @property
    def state(self) -> str:
        return self.lc.state

    def row(self) -> StepRowWrite:
        return StepRowWrite(
            self.name, self.item, self.state, self.attempt, self.started_at, self.finished_at,
            self.error, self.next_attempt_at,
        )

    def event(self, type_: str, **data: Any) -> NewEvent:
        return NewEvent(type_, self.name, self.item_or_none, self.attempt or None, data)


def _run_in_thread(fn: Callable[..., Any], kwargs: dict[str, Any], name: str) -> asyncio.Future[Any]:
    """Run a sync step on a daemon thread: one that outlives a timeout or a shutdown is abandoned,
    and never holds the process open."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[Any] = loop.create_future()

    def settle(ok: bool, value: Any) -> None:
        if not fut.done():
            fut.set_result(value) if ok else fut.set_exception(value)

    def target() -> None:
        try:
            result = fn(**kwargs)
        except BaseException as exc:  # delivered to the awaiting task, where it is classified
            loop.call_soon_threadsafe(settle, False, exc)
        else:
            loop.call_soon_threadsafe(settle, True, result)

    threading.Thread(target=target, name=f"step-{name}", daemon=True).start()
    return fut


class RunExecutor:
    def __init__(self, runtime: Runtime, wf: Workflow, snap: RunSnapshot, fence: int) -> None:
        self.runtime = runtime
        self.wf = wf
        self.run_id = snap.run.id
        self.input: dict[str, Any] = snap.run.input
        self.fence = fence
        self.run_lc = run_lifecycle(snap.run.state, self.run_id)
        self.started_at = snap.run.started_at
        self.parents: dict[str, StepState] = {}
        self.tasks: dict[asyncio.Task[Any], StepState] = {}
        self.failure: str | None = None
        self.stopping = False
        self._wake = asyncio.Event()
        self._load(snap)

    # -- loading ----------------------------------------------------------------------------

    def _load(self, snap: RunSnapshot) -> None:
        stored = {s.name for s in snap.parents()}
        defined = {s.name for s in self.wf.steps}
        if stored != defined:
            added, removed = sorted(defined - stored), sorted(stored - defined)
            raise ConflictError(
                f"run {self.run_id}: workflow {self.wf.name} changed since the run started"
                + (f"; new steps: {', '.join(added)}" if added else "")
                + (f"; removed steps: {', '.join(removed)}" if removed else "")
            )
        for row in snap.parents():
            self.parents[row.name] = self._state_from(self.wf[row.name], row)
        for name, parent in self.parents.items():
            rows = snap.children(name)
            if not rows:
                continue
            source = self.parents[parent.step.map_over or ""].output or []
            for row in rows:
                child = self._state_from(parent.step, row)
                child.item_value = source[row.item_index] if row.item_index is not None and row.item_index < len(source) else None
                parent.children.append(child)
            if parent.state == "succeeded":
                parent.output = [c.output for c in parent.children]

    def _state_from(self, step: Step, row: StepRow) -> StepState:
        return StepState(
            step=step,
            item=row.item,
            lc=step_lifecycle(row.state, f"{row.name}[{row.item}]" if row.item else row.name),
            item_index=row.item_index,
            attempt=row.attempt,
            started_at=row.started_at,
            finished_at=row.finished_at,
            error=row.error,
            next_attempt_at=row.next_attempt_at,
            output=row.output if row.state == "succeeded" else None,
        )

    def all_states(self) -> list[StepState]:
        out: list[StepState] = []
        for p in self.parents.values():
            out.append(p)
            out.extend(p.children)
        return out

    # -- the loop ---------------------------------------------------------------------------

    async def execute(self) -> str:
        """Run to an end; returns the run's final state, or "interrupted" when stopped early."""
        change = self._change()
        self._recover(change)
        heartbeat = asyncio.create_task(self._heartbeat())
        try:
            while True:
                launch = self._schedule(change)
                self._maybe_finish(change)
                if change.events:
                    await self._commit(change)
                change = self._change()
                for st in launch:
                    self._launch(st)
                if self.run_lc.state != "running":
                    return self.run_lc.state
                if not self.tasks and self.stopping:
                    await self._commit_interrupted()
                    return "interrupted"
                await self._wait_for_work(change)
        finally:
            heartbeat.cancel()
            for task in self.tasks:
                task.cancel()

    def _change(self) -> Change:
        return Change(self.run_id, self.fence, [])

    async def _commit(self, change: Change) -> None:
        await asyncio.wrap_future(self.runtime.writer.submit(change))

    def _recover(self, change: Change) -> None:
        """Bring a stored run to a state the loop can continue from."""
        now = utcnow()
        state = self.run_lc.state
        if state == "pending":
            self.run_lc.send("start")
            self.started_at = now
            change.run = RunWrite("running", started_at=now)
            change.events.append(NewEvent("run_started", data={"owner": self.runtime.owner}))
        else:
            if state == "paused":
                self.run_lc.send("unpause")
            elif state == "failed":
                self.run_lc.send("reopen")
            change.run = RunWrite("running")
            change.events.append(NewEvent("run_resumed", data={"owner": self.runtime.owner, "from_state": state}))
        for st in self.all_states():
            if st.state == "running" and not (st.step.map_over and not st.item):
                self._abandon(st, change, "the process running it stopped")
            elif st.state == "failed" and state == "failed":
                st.lc.send("reset")
                st.error = None
                change.steps.append(st.row())
                change.events.append(st.event("step_reset", reason="resume of a failed run"))

    def _abandon(self, st: StepState, change: Change, reason: str) -> None:
        st.lc.send("interrupt")
        change.attempts_finished.append(
            AttemptWrite(st.name, st.item, st.attempt, "abandoned", finished_at=utcnow(), error=reason)
        )
        change.steps.append(st.row())
        change.events.append(st.event("attempt_abandoned", reason=reason))

    # -- scheduling -------------------------------------------------------------------------

    def _running(self, parent: StepState | None = None) -> int:
        if parent is None:
            return len(self.tasks)
        return sum(1 for st in self.tasks.values() if st.step is parent.step)

    def _schedule(self, change: Change) -> list[StepState]:
        """Decide every transition possible now; return the steps to launch after the commit."""
        if self.stopping or self.failure or self.run_lc.state != "running":
            return []
        launch: list[StepState] = []
        now = utcnow()
        budget = self.wf.max_concurrency - self._running()

        def can_start(st: StepState) -> bool:
            return st.state == "pending" or (
                st.state == "waiting" and (st.next_attempt_at is None or st.next_attempt_at <= now)
            )

        progressed = True
        while progressed:
            progressed = False
            for parent in self.parents.values():
                if parent.step.map_over and parent.state == "running":
                    limit = (parent.step.concurrency or self.wf.max_concurrency) - self._running(parent)
                    limit -= sum(1 for st in launch if st.step is parent.step)
                    for child in parent.children:
                        if budget <= 0 or limit <= 0:
                            break
                        if can_start(child):
                            self._start(child, change)
                            launch.append(child)
                            budget -= 1
                            limit -= 1
                    continue
                if not can_start(parent):
                    continue
                deps = [self.parents[d] for d in parent.step.depends_on]
                if not all(d.state in STEP_DONE for d in deps):
                    continue
                if parent.state == "pending" and parent.step.when is not None and not self._call_when(parent):
                    parent.lc.send("skip")
                    parent.finished_at = now
                    change.steps.append(parent.row())
                    change.events.append(parent.event("step_skipped", reason="condition is false"))
                    progressed = True
                elif parent.step.map_over:
                    self._expand(parent, change)
                    progressed = True
                elif budget > 0:
                    self._start(parent, change)
                    launch.append(parent)
                    budget -= 1
        return launch

    def _call_when(self, st: StepState) -> bool:
        assert st.step.when is not None
        names = set(inspect.signature(st.step.when).parameters)
        kwargs = {k: v for k, v in self._kwargs(st, None).items() if k in names}
        return bool(st.step.when(**kwargs))

    def _expand(self, parent: StepState, change: Change) -> None:
        """Start a fan-out: one child row per item of the source step's list."""
        source = self.parents[parent.step.map_over or ""].output
        self._begin_attempt(parent, change)
        keys: list[str] = []
        problem = None
        if not isinstance(source, list):
            problem = f"map_over {parent.step.map_over} returned {type(source).__name__}, expected a list"
        else:
            for i, item in enumerate(source):
                key = str(parent.step.item_key(item)) if parent.step.item_key else str(i)
                if key in keys:
                    problem = f"item key {key!r} appears twice in {parent.step.map_over}'s output"
                    break
                keys.append(key)
        change.events.append(parent.event("step_started", items=len(keys)))
        if problem is not None:
            self._fail(parent, change, problem)
            return
        assert isinstance(source, list)
        for i, (key, item) in enumerate(zip(keys, source)):
            child = StepState(parent.step, key, step_lifecycle("pending", f"{parent.name}[{key}]"), i, item)
            parent.children.append(child)
            change.new_steps.append(NewStepRow(parent.name, key, i, "pending", list(parent.step.depends_on)))
        if not keys:
            self._succeed_parent(parent, change)

    def _begin_attempt(self, st: StepState, change: Change) -> None:
        st.lc.send("start")
        st.attempt += 1
        st.started_at = utcnow()
        st.finished_at = None
        st.next_attempt_at = None
        st.error = None
        change.steps.append(st.row())
        change.attempts_started.append(AttemptWrite(st.name, st.item, st.attempt, "running", started_at=st.started_at))

    def _start(self, st: StepState, change: Change) -> None:
        self._begin_attempt(st, change)
        change.events.append(st.event("step_started"))

    def _kwargs(self, st: StepState, ctx: StepContext | None) -> dict[str, Any]:
        kwargs: dict[str, Any] = {}
        for p in st.step.params:
            if p.name == "ctx":
                kwargs["ctx"] = ctx
            elif p.name == "item":
                kwargs["item"] = st.item_value
            elif p.name == "input":
                kwargs["input"] = self.input
            elif p.name in self.parents:
                kwargs[p.name] = self.parents[p.name].output
            elif p.name in self.input:
                kwargs[p.name] = self.input[p.name]
            else:
                kwargs[p.name] = p.default
        return kwargs

    def _launch(self, st: StepState) -> None:
        ctx = StepContext(self.run_id, st.name, st.item_or_none, st.attempt, self.input, self._publish)
        st.ctx = ctx
        st.began = time.monotonic()
        task = asyncio.create_task(self._invoke(st, ctx), name=st.label)
        self.tasks[task] = st
        task.add_done_callback(lambda _t: self._wake.set())

    async def _invoke(self, st: StepState, ctx: StepContext) -> Any:
        kwargs = self._kwargs(st, ctx)
        if st.step.is_async:
            awaitable: Any = st.step.fn(**kwargs)
        else:
            awaitable = _run_in_thread(st.step.fn, kwargs, st.label)
        if st.step.timeout is None:
            return await awaitable
        try:
            return await asyncio.wait_for(awaitable, st.step.timeout)
        except asyncio.TimeoutError:
            ctx._stop.set()
            raise StepTimeout(f"timed out after {st.step.timeout:g}s") from None

    def _publish(self, event: NewEvent) -> None:
        self.runtime.writer.publish(Change(self.run_id, self.fence, [event]))

    async def _wait_for_work(self, change: Change) -> None:
        timeout = None
        waits = [st.next_attempt_at for st in self.all_states() if st.state == "waiting" and st.next_attempt_at]
        if waits:
            timeout = max(0.0, (min(waits) - utcnow()).total_seconds())
        if not self.tasks and timeout is None:
            if not self.failure:
                raise RuntimeError(f"run {self.run_id}: nothing running and nothing ready")  # a bug, not a user error
            return
        self._wake.clear()
        if not any(t.done() for t in self.tasks):
            try:
                await asyncio.wait_for(self._wake.wait(), timeout)
            except asyncio.TimeoutError:
                pass
        for task in [t for t in self.tasks if t.done()]:
            self._settle(self.tasks.pop(task), task, change)

    # -- outcomes ---------------------------------------------------------------------------

    def _settle(self, st: StepState, task: asyncio.Task[Any], change: Change) -> None:
        error: BaseException | None
        if task.cancelled():
            error = StepInterrupted("cancelled")
        else:
            error = task.exception()
        if error is None:
            try:
                text = encode(task.result(), f"step {st.label}")
            except OutputNotSerializable as exc:
                error = exc
            else:
                self._succeed(st, change, text)
                return
        if isinstance(error, StepInterrupted) or (self.stopping and isinstance(error, asyncio.CancelledError)):
            self._abandon(st, change, "interrupted")
            return
        message = f"{type(error).__name__}: {error}" if not isinstance(error, (StepTimeout, OutputNotSerializable)) else str(error)
        policy = self.wf.policy_for(st.step)
        retryable = not isinstance(error, (OutputNotSerializable, NonRetryable))
        if retryable and policy.should_retry(st.attempt, error) and not self.stopping:
            delay = policy.delay(st.attempt, error)
            st.lc.send("wait")
            st.error = message
            st.next_attempt_at = utcnow() + timedelta(seconds=delay)
            change.attempts_finished.append(
                AttemptWrite(st.name, st.item, st.attempt, "failed", finished_at=utcnow(), error=message)
            )
            change.steps.append(st.row())
            change.events.append(
                st.event("step_retrying", error=message, delay_s=round(delay, 3), next_attempt_at=st.next_attempt_at.isoformat())
            )
            return
        self._fail(st, change, message)

    def _succeed(self, st: StepState, change: Change, text: str) -> None:
        st.output = json.loads(text)
        st.lc.send("succeed")
        st.finished_at = utcnow()
        change.attempts_finished.append(
            AttemptWrite(st.name, st.item, st.attempt, "succeeded", finished_at=st.finished_at, output=text)
        )
        change.steps.append(st.row())
        change.events.append(
            st.event("step_succeeded", duration_s=round(time.monotonic() - st.began, 4), summary=summarize(st.output))
        )
        if st.item:
            parent = self.parents[st.name]
            if all(c.state == "succeeded" for c in parent.children):
                self._succeed_parent(parent, change)

    def _succeed_parent(self, parent: StepState, change: Change) -> None:
        parent.output = [c.output for c in parent.children]
        parent.lc.send("succeed")
        parent.finished_at = utcnow()
        change.attempts_finished.append(
            AttemptWrite(parent.name, "", parent.attempt, "succeeded", finished_at=parent.finished_at)
        )
        change.steps.append(parent.row())
        change.events.append(parent.event("step_succeeded", items=len(parent.children), summary=summarize(parent.output)))

    def _fail(self, st: StepState, change: Change, message: str) -> None:
        st.lc.send("fail")
        st.error = message
        st.finished_at = utcnow()
        change.attempts_finished.append(
            AttemptWrite(st.name, st.item, st.attempt, "failed", finished_at=st.finished_at, error=message)
        )
        change.steps.append(st.row())
        change.events.append(st.event("step_failed", error=message))
        self.failure = self.failure or f"step {st.label} failed: {message}"
        if st.item:
            parent = self.parents[st.name]
            if parent.state == "running":
                self._fail(parent, change, f"item {st.item} failed")

    def _maybe_finish(self, change: Change) -> None:
        if self.run_lc.state != "running" or self.tasks:
            return
        now = utcnow()
        duration = round((now - self.started_at).total_seconds(), 3) if self.started_at else None
        if self.failure:
            self.run_lc.send("fail")
            change.run = RunWrite("failed", finished_at=now, error=self.failure)
            change.events.append(NewEvent("run_failed", data={"error": self.failure, "duration_s": duration}))
        elif all(p.state in STEP_DONE for p in self.parents.values()):
            self.run_lc.send("succeed")
            change.run = RunWrite("succeeded", finished_at=now)
            change.events.append(NewEvent("run_succeeded", data={"duration_s": duration}))

    # -- stopping ---------------------------------------------------------------------------

    def stop(self) -> None:
        """Start no new step; running steps finish (see `interrupt` for the rest)."""
        self.stopping = True
        self._wake.set()

    def interrupt(self) -> None:
        """Ask running steps to stop now: async ones are cancelled, sync ones stop at their next
        emit/checkpoint or are abandoned."""
        self.stopping = True
        for task, st in self.tasks.items():
            if st.ctx is not None:
                st.ctx._stop.set()
            task.cancel()
        self._wake.set()

    async def _commit_interrupted(self) -> None:
        change = self._change()
        change.events.append(NewEvent("run_interrupted", data={"owner": self.runtime.owner}))
        await self._commit(change)

    async def _heartbeat(self) -> None:
        ttl = self.runtime.lease_ttl
        while True:
            await asyncio.sleep(ttl / 3)
            ok = await asyncio.to_thread(self.runtime.store.heartbeat, self.run_id, self.fence, ttl)
            if not ok:
                self.interrupt()
                raise LeaseLost(f"run {self.run_id}: another executor took it over")
