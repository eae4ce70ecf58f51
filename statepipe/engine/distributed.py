"""Distributed fan-outs, the worker's side. A map_over step with `distribute=True` has children any
process on the database may claim, as workers claim runs (statepipe.claim_children: SKIP LOCKED,
a lease per child, a fence that grows with every claim). The run's executor expands the fan-out,
follows its children and joins them (RunExecutor._follow); a ChildRunner claims children, runs
each attempt as the executor would (engine/attempt.py) and commits its start and its end under
the claim, so a worker that lost its claim (its lease ran out; another took the child) cannot
write. A worker killed mid-child loses that attempt only: once its lease runs out the next
claimer records it abandoned and runs the child again."""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from functools import partial
from typing import TYPE_CHECKING, Any

from statepipe.engine.attempt import DIED, call, died_in_row, judge, step_kwargs
from statepipe.engine.context import StepContext, StepInterrupted
from statepipe.engine.hooks import run_hook, settle, start_hook
from statepipe.engine.outputs import encode, summarize
from statepipe.engine.requests import CANCEL_REQUESTS
from statepipe.engine.steps import StepState, abandoned, cancelled, record_attempt, retrying
from statepipe.engine.waits import AwaitingInput
from statepipe.errors import ClaimLost, DatabaseUnavailable, NonRetryable, OutputNotSerializable, StatepipeError
from statepipe.lifecycles import step_lifecycle
from statepipe.processes import describe_owner
from statepipe.store.records import Change, ChildClaim, ChildClaimRequest, ChildHold, NewEvent, utcnow

if TYPE_CHECKING:
    from statepipe.definition.workflow import Workflow
    from statepipe.engine.runtime import Runtime

log = logging.getLogger("statepipe.distributed")

CLAIM_BATCH = 8  # free slots a busy runner waits for before it claims more
CLAIM_POLL_S = 1.0  # how often an idle runner looks for children anyway (retries fall due, leases run out)
# what stops a run's children mid-attempt: its requests (pause_now; "stop": its owner's, the run
# is failing) and its end
STOPS = (*CANCEL_REQUESTS, "pause_now", "stop", "ended")
_INPUTS_KEPT = 16  # fan-outs whose upstream outputs a runner keeps decoded


class _PassedOver(Exception):
    """The child's run is passed over here for now (Runtime.set_back)."""


@dataclass(eq=False)
class _Held:
    claim: ChildClaim
    hold: ChildHold
    work: asyncio.Future[Any] | None = None  # the step function's call, while it runs
    ctx: StepContext | None = None
    stop: str | None = None  # why it is being stopped: a run request (STOPS), or "lost"
    began: float = field(default_factory=time.monotonic)
    hooks: set[Future[None]] = field(default_factory=set)  # its async on_progress hooks still running

    def interrupt(self, why: str) -> None:
        if self.stop is None:
            self.stop = why
        if self.ctx is not None:
            self.ctx._stopped = True
        if self.work is not None:
            self.work.cancel()


class ChildRunner:
    """Claims distributed children and runs them, `slots` at a time; in a `statepipe run` process
    (`own`), only the children of the runs it executes."""

    def __init__(self, runtime: Runtime, slots: int, *, workflows: tuple[str, ...] | None = None, own: bool = False) -> None:
        self.runtime = runtime
        self.slots = slots
        self.workflows = workflows
        self.own = own
        self.held: dict[tuple[str, str, str], _Held] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._loop = asyncio.get_running_loop()  # made by a running engine; async on_progress hooks run on it
        self._closed = False
        self._inputs: dict[tuple[str, str, int], asyncio.Future[dict[str, Any]]] = {}

    def wake(self) -> None:
        self._wake.set()

    def close(self) -> None:
        """Claim nothing more; `serve` returns once the children running here have ended."""
        self._closed = True
        self._wake.set()

    def stop_run(self, run_id: str, kind: str) -> None:
        """A request reached the run (cancel, pause_now): its children here stop mid-attempt."""
        if kind in STOPS:
            for key, held in self.held.items():
                if key[0] == run_id:
                    held.interrupt(kind)

    def interrupt(self) -> None:
        for held in self.held.values():
            held.interrupt("pause_now")

    def wanted(self) -> tuple[str, ...] | None:
        """The runs whose children this runner may claim (None: any)."""
        if not self.own:
            return None
        return tuple(run_id for run_id, ex in self.runtime.executors.items() if any(s.distribute for s in ex.wf.steps))

    async def serve(self) -> None:
        """Claim and run children until the runtime drains (or, `own`, until its runs need no
        more); the children running then finish first."""
        renewing = asyncio.create_task(self._renew())
        try:
            while not self.runtime.stopping and not self._closed:
                self._wake.clear()
                runs = self.wanted()
                if runs == () and not self.held:
                    break
                free = self.slots - len(self.held)
                # claimed a few at a time, not one as each child ends: a claim is a transaction
                if runs != () and free >= min(CLAIM_BATCH, self.slots):
                    request = ChildClaimRequest(self.runtime.owner, self.runtime.lease_ttl, free, self.workflows, runs,
                                                skip=tuple(sorted(self.runtime.passed_over())))
                    try:
                        claims = await asyncio.to_thread(self.runtime.store.claim_children, request)
                    except DatabaseUnavailable as exc:
                        log.warning("cannot claim children: %s", exc)
                        claims = []
                    for claim in claims:
                        self._start(claim)
                    if claims and len(claims) == free:
                        continue  # maybe more where those came from
                try:
                    async with asyncio.timeout(CLAIM_POLL_S):
                        await self._wake.wait()
                except TimeoutError:
                    pass
        finally:
            if self._tasks:
                await asyncio.wait(self._tasks)
            renewing.cancel()

    def _start(self, claim: ChildClaim) -> None:
        held = _Held(claim, ChildHold(claim.name, claim.item, claim.fence))
        before = self.held.get((claim.run_id, claim.name, claim.item))
        if before is not None:  # this worker's own earlier claim ran out (a database outage): it writes nothing
            before.interrupt("lost")
        self.held[(claim.run_id, claim.name, claim.item)] = held
        task = asyncio.create_task(self._run(held), name=f"{claim.name}[{claim.item}]")
        self._tasks.add(task)

        def done(t: asyncio.Task[None]) -> None:
            self._tasks.discard(t)
            if self.held.get((claim.run_id, claim.name, claim.item)) is held:
                del self.held[(claim.run_id, claim.name, claim.item)]
            self._wake.set()

        task.add_done_callback(done)

    async def _renew(self) -> None:
        """Keep the claims alive; stop a child whose claim was lost or whose run was asked to stop."""
        ttl = self.runtime.lease_ttl
        while True:
            await asyncio.sleep(ttl / 3)
            held = list(self.held.values())
            if not held:
                continue
            try:
                kept = await asyncio.to_thread(
                    self.runtime.store.renew_claims, [(h.claim.run_id, h.hold) for h in held], ttl
                )
            except DatabaseUnavailable as exc:
                log.warning("renewing claims of children failed: %s", exc)
                continue
            for h in held:
                key = (h.claim.run_id, h.claim.name, h.claim.item)
                if key not in kept:
                    h.interrupt("lost")
                elif kept[key] in STOPS:
                    h.interrupt(str(kept[key]))

    async def _run(self, held: _Held) -> None:
        c = held.claim
        try:
            await self._attempt(held)
        except ClaimLost as exc:  # another worker has it now (or its run was asked to stop first)
            log.info("%s", exc)
            await asyncio.to_thread(self.runtime.store.release_claims, c.run_id, [held.hold])
        except (StatepipeError, DatabaseUnavailable) as exc:  # its lease runs out; another worker tries
            log.warning("run %s, step %s[%s]: %s", c.run_id, c.name, c.item, exc)
        except Exception:  # a bug: logged, the claim lapses, the worker goes on
            log.exception("run %s, step %s[%s]", c.run_id, c.name, c.item)

    async def _attempt(self, held: _Held) -> None:
        c, writer, owner = held.claim, self.runtime.writer, self.runtime.owner
        try:
            if c.run_id in self.runtime.passed_over():  # a sibling claimed with it just failed to load
                raise _PassedOver()
            wf = self.runtime.definition(c.workflow_ref, c.workflow).workflow
        except (Exception, SystemExit) as exc:  # noqa: BLE001 - as for a run (Runtime._execute_claimed)
            if not isinstance(exc, _PassedOver):
                self.runtime.set_back(c.run_id, exc)  # passed over a while; another worker may have the file
            await asyncio.to_thread(self.runtime.store.release_claims, c.run_id, [held.hold])
            return
        step = wf[c.name]
        st = StepState(step, c.item, step_lifecycle(c.state, f"{c.name}[{c.item}]"), c.item_index, attempt=c.attempt,
                       error=c.error, started_at=c.started_at)
        start = Change(c.run_id, None, [], claims=[replace(held.hold, start=True)])
        if st.state == "running" and not await self._died(held, st, start, wf.abandon_limit(step)):
            await writer.committed(replace(start, claims=[replace(held.hold, release=True)]))
            await self._hook(held, wf, "on_error", st, error=st.error)
            return
        previous = st.error
        st.lc.send("start")
        st.attempt += 1
        st.started_at, st.finished_at, st.next_attempt_at, st.error = utcnow(), None, None, None
        start.steps.append(st.row())
        start.events.append(st.event("step_started", worker=owner))
        await writer.committed(start)

        held.ctx = st.ctx = StepContext(
            c.run_id, c.name, c.item, st.attempt, c.input, partial(self._publish, held, wf),
            dry_run=c.dry_run, last_error=previous, feedback=c.feedback,
        )
        held.began = time.monotonic()
        error: BaseException | None = None
        result: Any = None
        try:
            outputs = await self._upstream(c, list(step.depends_on))
            source = outputs.get(step.map_over or "")
            item = source[c.item_index] if isinstance(source, list) and c.item_index < len(source) else None
            kwargs = step_kwargs(step, st.ctx, item, c.input, c.overrides or {}, outputs, outputs.__getitem__)
            assert step.fn is not None
            held.work = asyncio.ensure_future(call(
                self.runtime.pool, wf, step, step.fn, kwargs, st.ctx, is_async=step.is_async, in_process=wf.in_process(step),
            ))
            await asyncio.wait([held.work])
            result = held.work.result() if not held.work.cancelled() else None
            if held.work.cancelled():
                error = StepInterrupted("stopped")
        except (Exception, AwaitingInput) as exc:  # AwaitingInput: a BaseException
            error = exc
        await settle(held.hooks)  # the attempt ends once what its progress started has
        if held.stop == "lost":
            return  # another claim holds it: nothing of this attempt is written
        st.ctx.flush_held()
        end = Change(c.run_id, None, [], claims=[replace(held.hold, release=True)])
        if error is None:
            try:
                text = encode(result, f"step {st.label}")
            except OutputNotSerializable as exc:
                error = exc
            else:
                st.lc.send("succeed")
                st.finished_at = utcnow()
                usage = record_attempt(st, end, "succeeded", owner, output=text)
                end.steps.append(st.row())
                data: dict[str, Any] = {"duration_s": round(time.monotonic() - held.began, 4), "summary": summarize(result)}
                if usage is not None:
                    data["usage"] = usage
                end.events.append(st.event("step_succeeded", **data))
        hook: tuple[str, dict[str, Any]] | None = None
        if error is not None:
            hook = self._ended_badly(st, end, error, held.stop, wf)
        await writer.committed(end)
        if hook is not None:  # as the executor calls them: once what they report is committed
            await self._hook(held, wf, hook[0], st, **hook[1])

    def _ended_badly(
        self, st: StepState, end: Change, error: BaseException, stop: str | None, wf: Workflow
    ) -> tuple[str, dict[str, Any]] | None:
        """Record how the attempt ended; the hook this calls for, with what it is told beyond the step."""
        owner = self.runtime.owner
        if isinstance(error, StepInterrupted) and stop in CANCEL_REQUESTS + ("ended",):
            cancelled(st, end, owner)
            return None
        if isinstance(error, StepInterrupted):  # pause --now, the run failing, or this worker shutting down now
            abandoned(st, end, owner, "interrupted")
            return None
        if isinstance(error, AwaitingInput):
            error = NonRetryable("ctx.wait_for and ctx.run_workflow are not available in a distributed step")
        failure = judge(wf, st.step, error, st.attempt)
        if failure.delay is not None:
            retrying(st, end, failure, owner)
            return "on_retry", {"error": failure.message, "delay_s": failure.delay}
        st.lc.send("fail")
        st.error = failure.message
        st.finished_at = utcnow()
        record_attempt(st, end, "failed", owner, error=failure.message, trace=failure.trace)
        end.steps.append(st.row())
        end.events.append(st.event("step_failed", error=failure.message, **failure.located, optional=st.step.optional))
        return "on_error", {"error": failure.message}

    def _publish(self, held: _Held, wf: Workflow, event: NewEvent) -> None:
        """What the child's context publishes (its progress, chunks, partial objects); a progress
        event calls the on_progress hook here, as the executor does for the steps it runs."""
        c = held.claim
        self.runtime.writer.publish(Change(c.run_id, None, [event]))
        if event.type == "progress" and "on_progress" in wf.hooks:
            meta = {"step": event.step, "item": event.item, **event.data}
            start_hook(wf, c.run_id, c.input, "on_progress", meta, partial(self._publish, held, wf), self._loop, held.hooks)

    async def _hook(self, held: _Held, wf: Workflow, name: str, st: StepState, **meta: Any) -> None:
        """The child's on_retry or on_error hook, called on this worker (the run's owner counts
        its children, it does not see each one fail); a hook's failure goes to the run's log."""
        if name in wf.hooks:
            meta = {"step": st.name, "item": st.item_or_none, "attempt": st.attempt, **meta}
            await run_hook(wf, held.claim.run_id, held.claim.input, name, meta, partial(self._publish, held, wf))

    async def _died(self, held: _Held, st: StepState, change: Change, limit: int) -> bool:
        """A child found running: the worker that held it died mid-attempt (its lease ran out).
        The attempt is recorded abandoned; at `limit` deaths in a row the child fails instead of
        running again (a child that kills its worker must not take every worker down in turn).
        True if it is to run again."""
        c = held.claim
        attempts = await asyncio.to_thread(self.runtime.store.attempts_of, c.run_id, c.name, c.item)
        died = died_in_row(attempts) + 1
        who = describe_owner(c.prior)
        reason = DIED + (f" ({who})" if who else "")
        record_attempt(st, change, "abandoned", c.prior or self.runtime.owner, error=reason)  # the dead one ran it
        change.events.append(st.event("attempt_abandoned", reason=reason, abandoned_in_row=died))
        if died >= limit:
            st.lc.send("fail")
            st.error = f"abandoned {died} times in a row: {DIED} each time; fix the cause, then statepipe rerun --from {c.name}"
            st.finished_at = utcnow()
            change.steps.append(st.row())
            change.events.append(st.event("step_failed", error=st.error, optional=st.step.optional))
            return False
        st.lc.send("interrupt")
        return True

    async def _upstream(self, c: ChildClaim, names: list[str]) -> dict[str, Any]:
        """The outputs the fan-out's children take, read once per fan-out attempt (by the first
        of its children here; the others wait for that read) and kept."""
        key = (c.run_id, c.name, c.parent_attempt)
        reading = self._inputs.get(key)
        if reading is None or (reading.done() and reading.exception() is not None):
            while len(self._inputs) >= _INPUTS_KEPT:
                del self._inputs[next(iter(self._inputs))]
            reading = self._inputs[key] = asyncio.ensure_future(asyncio.to_thread(self.runtime.store.outputs_of, c.run_id, names))
        return await asyncio.shield(reading)
