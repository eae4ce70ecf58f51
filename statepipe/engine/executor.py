"""Executing one run: find ready steps, commit their transitions, run them, commit the outcome.

Each round commits one Change holding every transition it decided (steps finished, steps
started, fan-outs expanded, the run finished), then launches the steps it started: so a step's
output is durable before any step that consumes it begins, and a crash at any instant leaves
the store in a state `resume` continues from.

A run has two phases: its steps, then (only when it fails, or is cancelled with compensation)
the compensations of its completed steps, newest first, each a persisted step of its own."""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import json
import logging
import time
from collections import Counter, deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from statepipe.definition.workflow import Step, Workflow
from statepipe.engine.attempt import DIED, call, died_in_row, judge, step_kwargs
from statepipe.engine.context import StepContext, StepInterrupted
from statepipe.engine.hooks import run_hook, settle, start_hook
from statepipe.engine.outputs import encode, summarize
from statepipe.engine.requests import CANCEL_REQUESTS, PAUSE_REQUESTS, RETRY_REQUEST
from statepipe.engine.rerun import RerunPlan
from statepipe.engine.steps import UNDECODED, StepState, abandoned, cancelled, record_attempt, retrying
from statepipe.engine.threads import ThreadCall
from statepipe.engine.waits import AwaitingInput
from statepipe.errors import (
    ConflictError,
    DatabaseUnavailable,
    LeaseLost,
    OutputNotSerializable,
    StepTimeout,
)
from statepipe.lifecycles import RUN_FINISHED, STEP_STATES, run_lifecycle, step_lifecycle
from statepipe.processes import describe_owner
from statepipe.store.records import (
    Change,
    NewEvent,
    NewStepRow,
    RunRow,
    RunSnapshot,
    RunWrite,
    StepRow,
    utcnow,
)
from statepipe.store.store import BIG_VALUE

if TYPE_CHECKING:
    from statepipe.engine.runtime import Runtime

log = logging.getLogger("statepipe.executor")

_SETTLED = frozenset(STEP_STATES) - {"pending", "waiting", "running"}  # states _schedule starts nothing from
FOLLOW_S = 0.05  # a distributed fan-out's children are read again at most this often when told of a change
FOLLOW_POLL_S = 1.0  # ... and this often anyway (a notice can be lost while the database is away)
ON_THE_SPOT_S = 0.002  # how long a lone run's loop blocks for its sync step before waiting as usual


@dataclass(frozen=True)
class _Cached:
    """A step's output found in the cache instead of computed."""

    source: dict[str, Any]
    output: str


def _cache_key(workflow: str, st: StepState, kwargs: dict[str, Any], feedback: str | None) -> str:
    """Same workflow step, same code and version, same inputs (run input, upstream outputs, item,
    overrides) and same guidance: same output."""
    material = {
        "workflow": workflow,
        "step": st.step.name,
        "code": st.step.fingerprint(),
        "inputs": {k: v for k, v in kwargs.items() if k != "ctx"},
        "feedback": feedback,
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True, default=str).encode()).hexdigest()


def _decode(steps: list[StepState]) -> None:
    for st in steps:
        st.output  # noqa: B018 - reading decodes it


class RunExecutor:
    def __init__(
        self, runtime: Runtime, wf: Workflow, snap: RunSnapshot, fence: int, rerun: RerunPlan | None = None,
        prior_owner: str | None = None,
    ) -> None:
        self.runtime = runtime
        self.prior_owner = prior_owner  # who executed the run before, when steps were left running
        self.rerun = rerun
        self.no_cache = snap.run.no_cache
        # steps a rerun invalidated: they bypass the cache. A step not done with a succeeded
        # attempt was invalidated by an earlier rerun whose execution was left to a worker or
        # interrupted: it is still to be computed afresh.
        self.fresh: set[str] = {
            s.name for s in snap.parents()
            if s.state not in ("succeeded", "skipped") and any(a.state == "succeeded" for a in s.attempts)
        }
        self.wf = wf
        self.run_id = snap.run.id
        self.input: dict[str, Any] = snap.run.input
        self.fence = fence
        self.run_lc = run_lifecycle(snap.run.state, self.run_id)
        self.started_at = snap.run.started_at
        self.clock_start = snap.run.started_at  # what the run timeout counts from
        self.loaded_run = snap.run
        self.ended: tuple[datetime, str | None] | None = None  # when the run finished, and why (if failed)
        self.request: str | None = snap.run.requested
        self.dry_run = snap.run.dry_run
        self.parents: dict[str, StepState] = {}
        self.compensations: list[StepState] = []
        self.tasks: dict[asyncio.Future[Any], StepState] = {}  # a step's task, or its thread's future
        self.failure: str | None = None
        self.stopping = False  # shutdown: start nothing, leave the run resumable
        self._interrupted = False
        self._hooks: list[tuple[str, dict[str, Any]]] = []
        self._late: list[NewEvent] = []  # events raised outside a round (hook failures)
        self._loop: asyncio.AbstractEventLoop | None = None  # execute()'s: async on_progress hooks run on it
        self._progress_hooks: set[Future[None]] = set()  # those still running: awaited before the run ends
        self._committing: list[StepState] = []  # steps whose outputs the next commit stores
        self._waiting: set[StepState] = set()  # steps (maybe) waiting for a retry: state checked on use
        self._awaiting: set[StepState] = set()  # steps (maybe) waiting for input: state checked on use
        self.inputs: dict[str, Any] = dict(snap.inputs)  # values sent to the run (waits.send)
        # parents not settled whose dependencies are satisfied, in step order: what _schedule
        # looks at (None: to be listed again). A chain's round then costs the same at its
        # thousandth step as at its first.
        self._eligible: list[StepState] | None = None
        self._wake = asyncio.Event()
        # distributed fan-outs (engine/distributed.py): their children change in other hands, so
        # they are read again (`_follow`) when a worker says so, at most every FOLLOW_S
        self._followed_at = 0.0
        self._follow_every = FOLLOW_S
        self._children_changed = True
        self._unread_request = False  # a request came since the children were last read
        self._workers_stopped = False  # the run is failing: workers were told to stop its children
        self._elsewhere: dict[str, int] = {}  # fan-out -> its children running, as last read
        # steps whose decoded output goes once all their dependents have succeeded: not the
        # result's, not a fan-out's source (its items live on in the children)
        kept = set(wf.sinks()) | {s.map_over for s in wf.steps if s.map_over}
        self._dependents = wf.dependents()
        self._position = {s.name: i for i, s in enumerate(wf.steps)}
        self._consumers = {name: deps for name, deps in self._dependents.items() if name not in kept and deps}
        self._load(snap)
        # asked every round: a run without any pays for an empty list, not a walk of its steps
        self._distributed = [p for p in self.parents.values() if p.step.distribute]

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
            self.parents[row.name] = st = self._state_from(self.wf[row.name], row)
            if st.step.distribute:
                st.limit = st.step.concurrency or self.wf.max_concurrency
        children: dict[str, list[StepRow]] = {}
        stale: dict[str, list[StepRow]] = {}
        for row in snap.steps:  # one pass: a run has as many rows as steps and children
            if row.item and row.compensates is None:
                (stale if row.item_index is None else children).setdefault(row.name, []).append(row)
        for name, parent in self.parents.items():
            source = self.parents[parent.step.map_over or ""].output if parent.step.map_over else None
            for row in sorted(children.get(name, ()), key=lambda r: r.item_index or 0):
                child = self._state_from(parent.step, row)
                index = row.item_index or 0
                child.item_value = source[index] if isinstance(source, list) and index < len(source) else None
                parent.children.append(child)
            parent.stale = [self._state_from(parent.step, row) for row in stale.get(name, ())]
            if parent.state == "succeeded" and parent.step.map_over:
                parent.output = [c.output for c in parent.children]
        for row in snap.compensations():
            target = self._find(row.compensates or "", row.item)
            comp = self._state_from(target.step, row)
            comp.undoes = target
            self.compensations.append(comp)
        self._waiting.update(st for st in self.all_states() if st.state == "waiting" and st.waiting_for is None)
        self._awaiting.update(st for st in self.all_states() if st.state == "waiting" and st.waiting_for is not None)
        if self.compensations:
            self.failure = snap.run.error or "compensating"
        else:  # a step failed, then its executor died before the run could end: it ends failed
            failed = [p for p in self.parents.values() if p.state == "failed" and not p.step.optional]
            if failed:
                self.failure = f"step {failed[0].name} failed: {failed[0].error}"

    def _find(self, name: str, item: str) -> StepState:
        parent = self.parents[name]
        return parent if not item else next(c for c in parent.children if c.item == item)

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
            decoded=row.output if row.state == "succeeded" else None,
            overrides=row.overrides,
            feedback=row.feedback,
            died=died_in_row(row.attempts),
            waiting_for=row.waiting_for,
            suspended=sum(1 for a in row.attempts if a.state == "suspended"),
        )

    def final_run(self) -> RunRow:
        """The run row as this executor leaves it, without reading it back."""
        finished_at, error = self.ended or (None, None)
        return replace(
            self.loaded_run, state=self.run_lc.state, input=self.input, started_at=self.started_at,
            finished_at=finished_at, error=error, owner=None,
        )

    def result(self) -> Any:
        """The run's result: its sink steps' outputs (one sink: that output)."""
        sinks = self.wf.sinks()
        if len(sinks) == 1:
            return self.parents[sinks[0]].output
        return {name: self.parents[name].output for name in sinks}

    def all_states(self) -> list[StepState]:
        out: list[StepState] = []
        for p in self.parents.values():
            out.append(p)
            out.extend(p.children)
        return out + self.compensations

    # -- the loop ---------------------------------------------------------------------------

    async def execute(self) -> str:
        """Run to an end; returns the run's final state (paused included), or "interrupted"
        when stopped early and left resumable."""
        self._loop = asyncio.get_running_loop()
        change = self.reopening()
        heartbeat = asyncio.create_task(self._heartbeat())
        try:
            while True:
                self._check_deadline()
                await self._follow(change)
                self._handle_request(change)
                self._take_inputs(change)
                launch = self._schedule_compensation(change) if self.compensations else self._schedule(change)
                if not launch:  # a step about to start: the run is not over
                    self._maybe_finish(change)
                    self._maybe_wait(change)
                change.events.extend(self._late)
                self._late.clear()
                if change.events:
                    await self._commit(change, launch)
                    await self._run_hooks()
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

    def reopening(self) -> Change:
        """The first commit of an execution: the run brought to a state the loop continues from,
        and the rerun applied. A rerun from the HTTP API commits only this and leaves the rest
        to whichever worker claims the run (control.rerun_detached)."""
        change = self._change()
        self._recover(change)
        if self.rerun is not None:
            self._apply_rerun(self.rerun, change)
        return change

    def _change(self) -> Change:
        return Change(self.run_id, self.fence, [])

    async def _commit(self, change: Change, launch: Sequence[StepState] = ()) -> None:
        writer = self.runtime.writer
        big, self._committing = [st for st in self._committing if len(st.stored or "") > BIG_VALUE], []
        if change.run is not None and change.run.release and not self._hooks:
            # a worker's run handing its slot on (no hook still to run): the claim for the
            # slot rides with this commit
            done = self.runtime.releasing(self.run_id, change)
            if done is not None:
                await done
                return
        if len(self.runtime.executors) == 1:  # alone in this process: nothing to group with
            # while PostgreSQL stores the commit, the steps it starts are readied (not run), and a
            # big output is decoded for its consumers: decoding a megabyte takes about as long as
            # storing it
            def meanwhile() -> None:
                _decode(big)
                for st in launch:
                    self._prepare(st)

            if writer.commit_now(change, meanwhile) is not None:
                return
        await writer.committed(change)

    def _recover(self, change: Change) -> None:
        """Bring a stored run to a state the loop can continue from."""
        now = utcnow()
        state = self.run_lc.state
        if state == "pending":
            self.run_lc.send("start")
            self.started_at = self.clock_start = now
            change.run = RunWrite("running", started_at=now, begin=True)
            change.events.append(NewEvent("run_started", data={"owner": self.runtime.owner}))
        else:
            if state == "paused":
                self.run_lc.send("unpause")
            elif state == "waiting":  # a value came, or a deadline: _take_inputs sorts out which
                self.run_lc.send("wake")
            elif state in RUN_FINISHED:  # succeeded and cancelled: only for a rerun
                self.run_lc.send("reopen")
                self.clock_start = now  # a reopened run gets its whole timeout again
            retry = self.request == RETRY_REQUEST  # batch re-runs a failed run's failed steps
            if retry:
                self.request = None
            change.run = RunWrite(
                "running", error=self.failure if self.compensations else None, clear_request=retry, begin=True
            )
            change.events.append(NewEvent("run_resumed", data={"owner": self.runtime.owner, "from_state": state}))
        retry_failed = state in ("failed", "paused", "cancelled") and not self.compensations
        if retry_failed:
            self.failure = None
        for st in self.all_states():
            if st.state == "running" and not (st.step.map_over and not st.undoes and (not st.item or st.step.distribute)):
                self._recover_died(st, change)  # (a distributed child is its claimer's: its lease tells)
            elif st.state in ("failed", "cancelled") and retry_failed:
                self._reset(st, change, f"resume of a {state} run")
                if st.step.map_over and not st.item and st.children:
                    self._begin_attempt(st, change)  # its failed children run again under it
        self._hook("on_init", resumed=state != "pending")

    def _record_attempt(
        self, st: StepState, change: Change, state: str, error: str | None = None, output: str | None = None,
        cached_from: dict[str, Any] | None = None, trace: str | None = None,
    ) -> dict[str, Any] | None:
        return record_attempt(st, change, state, self.runtime.owner, error, output, cached_from, trace)

    def _reset(self, st: StepState, change: Change, reason: str, event: str = "step_reset") -> None:
        if st.state == "waiting":
            st.lc.send("cancel")  # a pending retry is superseded: waiting -> cancelled -> pending
        st.lc.send("reset")
        st.error = None
        st.output = None
        self._reopened(st)
        change.steps.append(st.row())
        change.events.append(st.event(event, reason=reason))

    def _reopened(self, st: StepState) -> None:
        """A step is to run again: the lists kept to avoid rescans are made again when next used."""
        if st.undoes is not None:
            return
        if st.item:
            parent = self.parents[st.step.name]
            parent.ready = parent.done = None
        else:
            self._eligible = None

    def _satisfied(self, st: StepState) -> None:
        """A parent is done as far as dependents care: those now free to start become eligible."""
        if self._eligible is None:
            return
        for name in self._dependents.get(st.name, ()):
            dependent = self.parents[name]
            if dependent.state not in _SETTLED and dependent not in self._eligible and self._free(dependent):
                self._eligible.append(dependent)
        self._eligible.sort(key=lambda p: self._position[p.name])

    def _free(self, st: StepState) -> bool:
        return all(self.parents[d].satisfied for d in st.step.depends_on)

    def _eligible_parents(self) -> list[StepState]:
        if self._eligible is None:
            self._eligible = [p for p in self.parents.values() if p.state not in _SETTLED and self._free(p)]
        else:
            self._eligible = [p for p in self._eligible if p.state not in _SETTLED]
        return self._eligible

    def _startable_children(self, parent: StepState, now: datetime) -> Iterator[StepState]:
        """A running fan-out's children that may start now: those whose retry is due, then the
        pending ones in item order, taken from a queue (not found by walking every child)."""
        due = [
            w for w in self._waiting
            if w.item and w.undoes is None and w.step is parent.step and w.state == "waiting" and w.waiting_for is None
            and (w.next_attempt_at is None or w.next_attempt_at <= now)
        ]
        yield from sorted(due, key=lambda w: w.item_index or 0)
        if parent.ready is None:
            parent.ready = deque(c for c in parent.children if c.state == "pending")
        while parent.ready:
            child = parent.ready[0]
            if child.state == "pending":
                yield child  # started by the caller: no longer pending when we resume
            else:
                parent.ready.popleft()

    def _apply_rerun(self, plan: RerunPlan, change: Change) -> None:
        """Invalidate what the plan touches, in the same commit as the run's reopening: every
        step outside it keeps its stored output and does not execute."""
        old_input = self.input
        if plan.input is not None:
            self.input = plan.input
            assert change.run is not None
            change.run.input = plan.input
            change.events.append(NewEvent("input_changed", data={"before": old_input, "after": plan.input, "reason": plan.reason}))
        if plan.fingerprint is not None:
            assert change.run is not None
            change.run.fingerprint = plan.fingerprint
            change.events.append(NewEvent("code_changed", data={"steps": plan.changed}))
        named = plan.named(self.wf, old_input)
        affected = self.wf.descendants(named + list(plan.items))
        plan.affected_steps = affected
        self.fresh.update(affected)  # asked to run again: computed, not answered from the cache
        reason = plan.reason
        for name in affected:
            st = self.parents[name]
            if name in plan.items and name not in named:
                for child in st.children:
                    if child.item in plan.items[name] and child.state != "pending":
                        self._reset(child, change, reason, "step_invalidated")
                if st.state != "running":
                    if st.state != "pending":
                        self._reset(st, change, reason, "step_invalidated")
                    self._begin_attempt(st, change)  # its children run under a new attempt
            else:
                if st.state not in ("pending", "running"):
                    self._reset(st, change, reason, "step_invalidated")
                elif st.step.map_over and st.state == "running":  # reopened by the resume of a failed run
                    st.lc.send("interrupt")
                    self._reopened(st)
                if st.step.map_over:  # re-expanded from its source's new output
                    for child in st.children:
                        child.item_index = None
                        change.steps.append(child.row())
                    st.stale += st.children
                    st.children = []
            st.overrides = {**(st.overrides or {}), **plan.overrides.get(name, {})} or None
            if name in plan.feedback:
                st.feedback = plan.feedback[name]
            change.steps.append(st.row())
        kept = [n for n in self.parents if n not in affected]
        change.events.append(NewEvent("rerun", data={
            "reason": reason, "steps": named, "items": plan.items, "affected": affected, "kept": kept,
            "overrides": plan.overrides, "feedback": plan.feedback, **plan.note,
        }))

    def _abandon(self, st: StepState, change: Change, reason: str) -> None:
        abandoned(st, change, self.runtime.owner, reason)
        self._reopened(st)

    def _recover_died(self, st: StepState, change: Change) -> None:
        """An attempt its process left running: abandoned. Several in a row are a crash loop
        (the step kills its process: os._exit, a segfault, the OOM killer), so from the second
        the step waits as a retry would (the step's backoff), and at the workflow's
        `max_abandoned` it fails instead of running again, like any failed step."""
        st.died += 1
        who = describe_owner(self.prior_owner)
        reason = DIED + (f" ({who})" if who else "")
        limit = self.wf.abandon_limit(st.step)
        record_attempt(st, change, "abandoned", self.prior_owner or self.runtime.owner, error=reason)  # the dead one ran it
        change.events.append(st.event("attempt_abandoned", reason=reason, abandoned_in_row=st.died))
        if st.died >= limit:
            message = (
                f"abandoned {st.died} times in a row: {DIED} each time"
                + (f" (last: {who})" if who else "")
                + "; fix the cause, then statepipe rerun --from " + st.step.name
            )
            self._fail(st, change, message, recorded=True)
        elif st.died > 1:
            delay = self.wf.policy_for(st.step).delay(st.died - 1)
            st.lc.send("wait")
            self._waiting.add(st)
            st.error = reason
            st.next_attempt_at = utcnow() + timedelta(seconds=delay)
            change.steps.append(st.row())
            change.events.append(st.event(
                "step_retrying", error=reason, delay_s=round(delay, 3), next_attempt_at=st.next_attempt_at.isoformat(),
            ))
        else:
            st.lc.send("interrupt")
            self._reopened(st)
            change.steps.append(st.row())

    # -- control ----------------------------------------------------------------------------

    def set_request(self, kind: str | None) -> None:
        """A control command arrived (through NOTIFY or the heartbeat); `input`: a value was
        sent to the run (waits.send), for a step waiting here, maybe."""
        if kind == "input":
            asyncio.create_task(self.reload_inputs())
            return
        if kind == "children":  # a worker committed a distributed child's attempt
            self._children_changed = True
            self._wake.set()
            return
        if kind and kind != self.request and kind in CANCEL_REQUESTS + PAUSE_REQUESTS:
            self.request = kind
            self._unread_request = True  # what workers started before it, read after it
            if (kind in CANCEL_REQUESTS or kind == "pause_now") and not self.compensations:
                self._interrupt_tasks()  # an undo action in flight is never cut short: it completes
            self._wake.set()

    def _spawn_child(self, workflow: Any, run_input: dict[str, Any], key: str) -> str:
        """ctx.run_workflow, from the step's thread: the child run, found or started."""
        from statepipe.definition.loader import loaded_for

        return self.runtime.start_child(self.loaded_run, key, loaded_for(workflow), run_input)

    async def reload_inputs(self) -> None:
        """Read the values sent to the run again (one came: waits.send, or a child ended)."""
        try:
            self.inputs.update(await asyncio.to_thread(self.runtime.store.inputs, self.run_id))
        except DatabaseUnavailable as exc:  # the value stays stored: the next resume finds it
            log.warning("reading the inputs of run %s failed: %s", self.run_id, exc)
        self._wake.set()

    def _take_inputs(self, change: Change) -> None:
        """Waits whose value has come run again; those past their deadline fail (or retry)."""
        if not self._awaiting:
            return
        now = utcnow()
        for st in list(self._awaiting):
            if st.state != "waiting" or st.waiting_for is None:
                self._awaiting.discard(st)
                continue
            name = st.waiting_for.get("name")
            deadline = st.waiting_for.get("deadline")
            if name in self.inputs:
                st.waiting_for = None  # startable: it runs again, and wait_for returns the value
                self._waiting.add(st)
            elif deadline and datetime.fromisoformat(deadline) <= now:
                self._wait_timed_out(st, change, f"no value for {name!r} came within {st.waiting_for.get('timeout'):g}s")
            else:
                continue
            self._awaiting.discard(st)
            self._reopened(st)
            change.steps.append(st.row())

    def _wait_timed_out(self, st: StepState, change: Change, message: str) -> None:
        """A wait's deadline passed without its value: a failed try, retried per the policy
        (the step asks again, with a new deadline) or failing the step. Its suspended attempt
        is already written."""
        st.waiting_for = None
        st.error = message
        policy = self.wf.policy_for(st.step)
        tries = st.attempt - st.suspended + 1
        if policy.should_retry(tries, StepTimeout(message)):
            delay = policy.delay(tries)
            st.next_attempt_at = utcnow() + timedelta(seconds=delay)
            self._waiting.add(st)
            change.events.append(st.event(
                "step_retrying", error=message, delay_s=round(delay, 3), next_attempt_at=st.next_attempt_at.isoformat(),
            ))
        else:
            self._fail(st, change, message, recorded=True)

    def _await_input(self, st: StepState, change: Change, wait: AwaitingInput) -> None:
        """The attempt stopped at ctx.wait_for: recorded `suspended`, the step waits for the value."""
        deadline = utcnow() + timedelta(seconds=wait.timeout) if wait.timeout else None
        st.lc.send("wait")
        st.suspended += 1
        st.next_attempt_at = None
        st.waiting_for = {"name": wait.name, "schema": wait.schema, "deadline": deadline.isoformat() if deadline else None,
                          "timeout": wait.timeout}
        self._record_attempt(st, change, "suspended", error=f"waiting for input {wait.name!r}")
        change.steps.append(st.row())
        if st.ctx is not None and st.ctx.emitted:  # its text is the repeated part's: readers drop it
            change.events.append(st.event("attempt_abandoned", reason=f"waiting for input {wait.name!r}", retrying=True))
        change.events.append(st.event("step_waiting", input=wait.name, schema=wait.schema, deadline=st.waiting_for["deadline"]))
        self._awaiting.add(st)

    def _maybe_wait(self, change: Change) -> None:
        """Nothing runs, nothing can start, and steps wait for input: the run rests `waiting`,
        its lease released, until a value comes (or a deadline) and some executor takes it up."""
        if (self.run_lc.state != "running" or self.tasks or self.request or self.failure or self.compensations
                or self.stopping or change.run is not None or self._distributing()):
            return
        awaited = [st for st in self._awaiting if st.state == "waiting" and st.waiting_for is not None]
        if not awaited or any(st.state == "waiting" for st in self._waiting):
            return  # a retry's time comes sooner or later: this executor waits for it
        if self.runtime.local_children.get(self.run_id):
            return  # its child runs execute in this process: it waits here for them
        names = sorted({str(st.waiting_for["name"]) for st in awaited if st.waiting_for})
        deadlines = [datetime.fromisoformat(d) for st in awaited if st.waiting_for and (d := st.waiting_for.get("deadline"))]
        self.run_lc.send("await_input")
        change.run = RunWrite("waiting", release=True, wake_at=min(deadlines) if deadlines else None, awaits=names)
        change.events.append(NewEvent("run_waiting", data={"inputs": names}))

    def _handle_request(self, change: Change) -> None:
        """Carry out a pause or cancel once no step of ours is running."""
        busy = self.tasks or self._unread_request or any(self._elsewhere.values())  # (elsewhere: distributed children)
        if self.request is None or busy or self.run_lc.state != "running":
            return
        now = utcnow()
        if self.request in PAUSE_REQUESTS:
            self.run_lc.send("pause")
            change.run = RunWrite("paused", clear_request=True, release=True)
            change.events.append(NewEvent("run_paused", data={"request": self.request}))
            return
        if self.compensations:
            return  # cancelled during compensation: compensation completes, then the run ends
        for st in self.all_states():
            if st.state in ("pending", "waiting") or (st.state == "running" and st.step.map_over and not st.item):
                st.lc.send("cancel")
                st.finished_at = now
                change.steps.append(st.row())
                change.events.append(st.event("step_cancelled"))
        self.failure = self.failure or "cancelled"
        if self.request == "cancel_compensate" and self._begin_compensation(change, "cancelled"):
            return
        self._end(change, "cancel", "cancelled", None)

    def _check_deadline(self) -> None:
        if self.wf.timeout is None or self.clock_start is None or self.failure:
            return
        if utcnow() - self.clock_start > timedelta(seconds=self.wf.timeout):
            self.failure = f"run timed out after {self.wf.timeout:g}s"
            self._interrupt_tasks()

    # -- scheduling -------------------------------------------------------------------------

    def _running(self, parent: StepState | None = None) -> int:
        if parent is None:
            return len(self.tasks)
        return sum(1 for st in self.tasks.values() if st.step is parent.step)

    def _schedule(self, change: Change) -> list[StepState]:
        """Decide every transition possible now; return the steps to launch after the commit."""
        if self.stopping or self.failure or self.request or self.run_lc.state != "running":
            return []
        launch: list[StepState] = []
        now = utcnow()
        budget = self.wf.max_concurrency - self._running()

        def can_start(st: StepState) -> bool:
            return st.state == "pending" or (
                st.state == "waiting" and st.waiting_for is None and (st.next_attempt_at is None or st.next_attempt_at <= now)
            )

        progressed = True
        while progressed:
            progressed = False
            for parent in list(self._eligible_parents()):
                state = parent.lc.state
                if state in _SETTLED:  # skipped earlier in this pass
                    continue
                if parent.step.map_over and state == "running":
                    if parent.step.distribute:  # its children are claimed by workers (_follow)
                        continue
                    limit = (parent.step.concurrency or self.wf.max_concurrency) - self._running(parent)
                    limit -= sum(1 for st in launch if st.step is parent.step)
                    if budget > 0 and limit > 0:
                        for child in self._startable_children(parent, now):
                            self._start(child, change)
                            launch.append(child)
                            budget -= 1
                            limit -= 1
                            if budget <= 0 or limit <= 0:
                                break
                    continue
                if not can_start(parent):
                    continue
                if parent.state == "pending" and parent.step.when is not None and not self._call_when(parent):
                    parent.lc.send("skip")
                    parent.finished_at = now
                    change.steps.append(parent.row())
                    change.events.append(parent.event("step_skipped", reason="condition is false"))
                    self._satisfied(parent)
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
        keys: dict[str, None] = {}  # in item order; a dict so a repeated key is found at once
        problem = None
        if not isinstance(source, list):
            problem = f"map_over {parent.step.map_over} returned {type(source).__name__}, expected a list"
        else:
            for item in source:
                key = str(parent.step.item_key(item)) if parent.step.item_key else str(len(keys))
                if key in keys:
                    problem = f"item key {key!r} appears twice in {parent.step.map_over}'s output"
                    break
                keys[key] = None
        change.events.append(parent.event("step_started", items=len(keys)))
        if problem is not None:
            self._fail(parent, change, problem)
            return
        assert isinstance(source, list)
        existing = {c.item: c for c in parent.stale + parent.children}
        position = list(self.parents).index(parent.name)
        parent.children = []
        for i, (key, item) in enumerate(zip(keys, source)):
            child = existing.pop(key, None)
            if child is None:
                child = StepState(parent.step, key, step_lifecycle("pending", f"{parent.name}[{key}]"), i, item)
                change.new_steps.append(NewStepRow(
                    parent.name, key, i, "pending", list(parent.step.depends_on), position=position,
                    claimable=parent.step.distribute,
                ))
            else:  # a row from an earlier expansion: same identity, fresh attempt history continues
                if child.state != "pending":
                    self._reset(child, change, "re-expanded", "step_invalidated")
                child.item_index, child.item_value = i, item
                change.steps.append(child.row())
            parent.children.append(child)
        parent.stale = list(existing.values())
        parent.ready = parent.done = None
        if not keys:
            self._succeed_parent(parent, change)

    def _begin_attempt(self, st: StepState, change: Change) -> None:
        st.lc.send("start")
        st.attempt += 1
        st.started_at = utcnow()
        st.finished_at = None
        st.next_attempt_at = None
        st.previous_error, st.error = st.error, None
        change.steps.append(st.row())

    def _start(self, st: StepState, change: Change) -> None:
        self._begin_attempt(st, change)
        change.events.append(st.event("step_started"))

    def _kwargs(self, st: StepState, ctx: StepContext | None) -> dict[str, Any]:
        if st.undoes is not None:
            return self._compensation_kwargs(st, ctx)
        overrides = self.parents[st.step.name].overrides or {}
        return step_kwargs(st.step, ctx, st.item_value, self.input, overrides, self.parents, lambda n: self.parents[n].output)

    def _compensation_kwargs(self, st: StepState, ctx: StepContext | None) -> dict[str, Any]:
        assert st.undoes is not None and st.step.compensate is not None
        available = {"ctx": ctx, "output": st.undoes.output, "item": st.undoes.item_value, "input": self.input}
        names = inspect.signature(st.step.compensate).parameters
        return {n: available.get(n, self.input.get(n)) for n in names}

    def _prepare(self, st: StepState) -> None:
        """Ready an attempt: its context, and for a plain sync step its call (not yet started)."""
        st.ctx = StepContext(
            self.run_id, st.name, st.item_or_none, st.attempt, self.input, self._publish,
            dry_run=self.dry_run, last_error=st.previous_error, feedback=st.feedback or self.parents[st.step.name].feedback,
            _inputs=self.inputs, _spawn=self._spawn_child,
        )
        st.call = self._plain_call(st, st.ctx)

    def _launch(self, st: StepState) -> None:
        if st.ctx is None:  # not readied during the commit
            self._prepare(st)
        assert st.ctx is not None
        st.began = time.monotonic()
        work = st.call.start() if st.call is not None else asyncio.create_task(self._invoke(st, st.ctx), name=st.label)
        self.tasks[work] = st
        work.add_done_callback(lambda _t: self._wake.set())

    def _plain_call(self, st: StepState, ctx: StepContext) -> ThreadCall | None:
        """A sync step with no timeout and no cache to ask goes straight to its thread (None for
        any other): a task around it would cost the loop two more turns a step for nothing."""
        if (
            st.undoes is not None or st.step.is_async or st.step.timeout is not None or self.wf.cached(st.step)
            or self.wf.in_process(st.step)
        ):
            return None
        try:
            kwargs = self._kwargs(st, ctx)
        except Exception:  # the task path meets it again, and the attempt fails with it there
            return None
        st.cache_key = None
        assert st.step.fn is not None
        return ThreadCall(st.step.fn, kwargs)

    async def _invoke(self, st: StepState, ctx: StepContext) -> Any:
        kwargs = self._kwargs(st, ctx)
        st.cache_key = None
        if st.undoes is None and self.wf.cached(st.step):
            st.cache_key = _cache_key(self.wf.name, st, kwargs, ctx.feedback)
            if not self.no_cache and st.step.name not in self.fresh:
                hit = await asyncio.to_thread(self.runtime.store.cache_lookup, st.cache_key, st.step.cache_ttl)
                if hit is not None:
                    return _Cached(*hit)
        fn = st.step.compensate if st.undoes is not None else st.step.fn
        assert fn is not None
        return await call(
            self.runtime.pool, self.wf, st.step, fn, kwargs, ctx,
            is_async=st.step.is_async if st.undoes is None else inspect.iscoroutinefunction(fn),
            in_process=st.undoes is None and self.wf.in_process(st.step),
        )

    def _publish(self, event: NewEvent) -> None:
        self.runtime.writer.publish(Change(self.run_id, self.fence, [event]))
        if event.type == "progress" and "on_progress" in self.wf.hooks:
            assert self._loop is not None  # steps report only while execute() runs
            meta = {"step": event.step, "item": event.item, **event.data}
            start_hook(self.wf, self.run_id, self.input, "on_progress", meta, self._publish_late, self._loop, self._progress_hooks)

    def _publish_late(self, event: NewEvent) -> None:
        self.runtime.writer.publish(Change(self.run_id, self.fence, [event]))

    async def _wait_for_work(self, change: Change) -> None:
        timeout = None
        self._waiting = {st for st in self._waiting if st.state == "waiting"}
        waits = [st.next_attempt_at for st in self._waiting if st.next_attempt_at]
        if self.wf.timeout is not None and self.clock_start is not None and not self.failure:
            waits.append(self.clock_start + timedelta(seconds=self.wf.timeout))
        if waits:
            timeout = max(0.0, (min(waits) - utcnow()).total_seconds())
        if self._distributing():  # read again once told of a change, and anyway every FOLLOW_POLL_S
            every = self._follow_every if self._children_changed else FOLLOW_POLL_S  # (a notice may be lost)
            timeout = min(timeout if timeout is not None else every, every)
        if not self.tasks and timeout is None and not self.request and not self.runtime.local_children.get(self.run_id):
            if self.failure or any(st.state == "waiting" for st in self._awaiting):
                return  # the next round ends the run, or rests it waiting for input (_maybe_wait)
            raise RuntimeError(f"run {self.run_id}: nothing running and nothing ready")  # a bug, not a user error
        self._wake.clear()
        ready = any(t.done() for t in self.tasks)
        if not ready and self._wait_on_the_spot():
            await asyncio.sleep(0)  # the loop still turns once a step: heartbeat, signals, control
        elif not ready:
            try:
                await asyncio.wait_for(self._wake.wait(), timeout)
            except asyncio.TimeoutError:
                pass
        for task in [t for t in self.tasks if t.done()]:
            st = self.tasks.pop(task)
            self._settle(st, task, change)
            # the attempt is over: its context (which points back at this executor) goes, so a
            # finished run is freed by reference counting, outputs and all, not by a full GC pass
            st.ctx = st.call = None

    def _wait_on_the_spot(self) -> bool:
        """Alone in the process with one plain sync step running, block the loop a moment for
        it (ThreadCall.wait): True if it ended meanwhile. The loop has nothing else to run but the
        heartbeat, which two milliseconds do not hold up."""
        if len(self.tasks) != 1 or len(self.runtime.executors) != 1:
            return False
        call = next(iter(self.tasks.values())).call
        return call is not None and call.wait(ON_THE_SPOT_S)

    # -- distributed fan-outs ------------------------------------------------------------------

    def _distributing(self) -> list[StepState]:
        """Distributed fan-outs running, or ended with children still running elsewhere (the run
        ends once they have)."""
        return [p for p in self._distributed if p.state == "running" or self._elsewhere.get(p.name)]

    async def _follow(self, change: Change) -> None:
        """Learn how distributed fan-outs fare, when a worker committed one of their children (at
        most every `_follow_every`) or FOLLOW_POLL_S passed: a failed child fails its fan-out
        (the run ends once none runs any more), all succeeded join it with their outputs as
        stored. Counts by state are enough for that; while a request (cancel, pause) is pending
        the children's rows are read whole, since carrying it out writes them (every
        distributed fan-out's, even one that ended: its children in memory are as expanded).
        Once the run is failing, its workers are told to stop (`_stop_workers`), and children
        left running by a dead worker are recorded abandoned here, since no worker claims them
        any more."""
        fanouts = self._distributing()
        whole = self.request is not None
        if whole and self._unread_request:
            fanouts = [p for p in self._distributed if p.children or p in fanouts]
        if not fanouts:
            self._elsewhere.clear()
            self._unread_request = False
            return
        since = time.monotonic() - self._followed_at
        if since < (self._follow_every if self._children_changed else FOLLOW_POLL_S) and not self._unread_request:
            return
        self._children_changed = self._unread_request = False
        began = self._followed_at = time.monotonic()
        store = self.runtime.store
        try:
            if self.failure and self.request is None and not self._workers_stopped:
                self._workers_stopped = await asyncio.to_thread(store.stop_children, self.run_id)
            for parent in fanouts:
                # nobody claims these children any more: the owner takes those a dead worker left
                orphans = self.request is not None or self.failure is not None or parent.state != "running"
                taken = await asyncio.to_thread(store.take_lapsed, self.run_id, parent.name) if orphans else []
                if whole:
                    rows = await asyncio.to_thread(store.fanout_children, self.run_id, parent.name)
                    self._synced(parent, rows)
                    counts: dict[str, int] = Counter(row.state for row in rows)
                    counts["running"] = counts.get("running", 0) - len(taken)
                    failed = next(((c.item, c.error) for c in parent.children if c.state == "failed"), None)
                else:
                    counts, failed = await asyncio.to_thread(store.fanout_progress, self.run_id, parent.name)
                self._abandon_taken(parent, taken, change)
                self._elsewhere[parent.name] = counts.get("running", 0)
                if parent.state != "running":
                    continue
                if failed is not None:
                    self._fail(parent, change, f"item {failed[0]} failed: {failed[1]}")
                elif counts.get("succeeded", 0) == len(parent.children):
                    texts = await asyncio.to_thread(store.child_outputs, self.run_id, parent.name)
                    for child, text in zip(parent.children, texts):
                        if child.state != "succeeded":
                            child.lc = step_lifecycle("succeeded", child.label)
                        child.decoded, child.stored = UNDECODED, text
                    self._succeed_parent(parent, change)
        except DatabaseUnavailable as exc:
            log.warning("following the distributed children of run %s failed: %s", self.run_id, exc)
        # a wide fan-out's count takes a while: reading it at most a fifth of the time
        self._follow_every = max(FOLLOW_S, 4 * (time.monotonic() - began))

    def _abandon_taken(self, parent: StepState, taken: list[tuple[StepRow, str | None]], change: Change) -> None:
        """Children whose worker died mid-attempt, taken by this owner (Store.take_lapsed): the
        attempt abandoned, naming that worker, and the child back to pending."""
        children = {c.item: c for c in parent.children}
        for row, worker in taken:
            child = children.get(row.item)
            if child is None:
                continue
            child.lc = step_lifecycle("running", child.label)
            child.attempt, child.started_at = row.attempt, row.started_at
            who = describe_owner(worker)
            abandoned(child, change, worker or self.runtime.owner, DIED + (f" ({who})" if who else ""))

    def _synced(self, parent: StepState, rows: list[StepRow]) -> None:
        """A distributed fan-out's children as their rows now say."""
        children = {c.item: c for c in parent.children}
        for row in rows:
            child = children.get(row.item)
            if child is None:
                continue
            if child.state != row.state:
                child.lc = step_lifecycle(row.state, child.label)
            child.attempt, child.error, child.next_attempt_at = row.attempt, row.error, row.next_attempt_at
            child.started_at, child.finished_at = row.started_at, row.finished_at

    # -- outcomes ---------------------------------------------------------------------------

    def _settle(self, st: StepState, task: asyncio.Future[Any], change: Change) -> None:
        if st.ctx is not None:
            st.ctx.flush_held()
        error: BaseException | None = StepInterrupted("cancelled") if task.cancelled() else task.exception()
        if error is None:
            result = task.result()
            if isinstance(result, _Cached):
                change.events.append(st.event("step_cached", source=result.source))
                self._succeed(st, change, result.output, cached_from=result.source)
                return
            try:
                text = encode(result, f"step {st.label}")
            except OutputNotSerializable as exc:
                error = exc
            else:
                self._succeed(st, change, text, result)
                return
        if isinstance(error, AwaitingInput):
            self._await_input(st, change, error)
            return
        if isinstance(error, StepInterrupted) or (self._interrupted and isinstance(error, asyncio.CancelledError)):
            if self.request in CANCEL_REQUESTS and st.undoes is None:
                cancelled(st, change, self.runtime.owner)
            else:
                self._abandon(st, change, self.failure if self.failure and "timed out" in self.failure else "interrupted")
            return
        failure = judge(self.wf, st.step, error, st.attempt - st.suspended)  # an attempt that waited for input is no try
        if failure.delay is not None:  # while draining too: resume keeps the wait
            self._waiting.add(st)
            retrying(st, change, failure, self.runtime.owner)
            self._hook("on_retry", step=st.name, item=st.item_or_none, attempt=st.attempt, error=failure.message,
                       delay_s=failure.delay)
            return
        self._fail(st, change, failure.message, trace=failure.trace, at=failure.at)

    def _succeed(
        self, st: StepState, change: Change, text: str, value: Any = None, cached_from: dict[str, Any] | None = None
    ) -> None:
        """`value` is what the step returned (None when reused from the cache): enough for the
        one-line summary, while consumers get the stored JSON decoded."""
        st.decoded, st.stored = UNDECODED, text
        self._committing.append(st)
        st.lc.send("succeed")
        st.finished_at = utcnow()
        usage = self._record_attempt(st, change, "succeeded", output=text, cached_from=cached_from)
        change.steps.append(st.row())
        shown = st.output if cached_from is not None else value
        data: dict[str, Any] = {"duration_s": round(time.monotonic() - st.began, 4), "summary": summarize(shown)}
        if usage is not None:
            data["usage"] = usage
        change.events.append(st.event("step_succeeded", **data))
        if st.item and st.undoes is None:
            parent = self.parents[st.name]
            if parent.done is None:
                parent.done = sum(1 for c in parent.children if c.state == "succeeded")
            else:
                parent.done += 1
            if parent.state == "running" and parent.done == len(parent.children):
                self._succeed_parent(parent, change)
        elif st.undoes is None:
            self._release_inputs(st)
            self._satisfied(st)

    def _release_inputs(self, st: StepState) -> None:
        """Once every consumer of an upstream output has succeeded, nothing in this run reads it
        again but a compensation, so its decoded copy is let go (its JSON stays)."""
        for name in st.step.depends_on:
            consumers = self._consumers.get(name)
            if consumers and all(self.parents[c].state == "succeeded" for c in consumers):
                self.parents[name].release()

    def _succeed_parent(self, parent: StepState, change: Change) -> None:
        parent.output = [c.output for c in parent.children]
        for child in parent.children:  # the parent's list holds the decoded outputs; children their JSON
            child.release()
        parent.lc.send("succeed")
        parent.finished_at = utcnow()
        self._record_attempt(parent, change, "succeeded")
        change.steps.append(parent.row())
        change.events.append(parent.event("step_succeeded", items=len(parent.children), summary=summarize(parent.output)))
        self._satisfied(parent)

    def _fail(
        self, st: StepState, change: Change, message: str, recorded: bool = False, trace: str | None = None,
        at: str | None = None,
    ) -> None:
        """`recorded`: the attempt is already written (abandoned), only the step fails. `trace`
        and `at`: the user's traceback and where in their code it failed (tracebacks.py)."""
        st.lc.send("fail")
        st.error = message
        st.finished_at = utcnow()
        if not recorded:
            self._record_attempt(st, change, "failed", error=message, trace=trace)
        change.steps.append(st.row())
        change.events.append(st.event("step_failed", error=message, **({"at": at} if at else {}), optional=st.step.optional))
        self._hook("on_error", step=st.name, item=st.item_or_none, attempt=st.attempt, error=message)
        if st.undoes is not None:
            return  # a failed compensation is reported; the others still run
        if st.item:
            parent = self.parents[st.name]
            if parent.state == "running":
                self._fail(parent, change, f"item {st.item} failed: {message}")
            return
        if st.step.optional:
            self._satisfied(st)
            return
        if st.step.on_exhausted == "pause" and self.request is None:
            self.request = "pause"
            return
        self.failure = self.failure or f"step {st.label} failed: {message}"

    def _maybe_finish(self, change: Change) -> None:
        if self.run_lc.state != "running" or self.tasks or any(self._elsewhere.values()) or self.request or self.compensations:
            return
        if self.failure:
            if not self._begin_compensation(change, "failed"):
                self._end(change, "fail", "failed", self.failure)
        elif not self._eligible_parents() and all(p.satisfied for p in self.parents.values()):
            self._end(change, "succeed", "succeeded", None)

    def _end(self, change: Change, event: str, state: str, error: str | None) -> None:
        now = utcnow()
        self.run_lc.send(event)
        self.ended = (now, error)
        duration = round((now - self.started_at).total_seconds(), 3) if self.started_at else None
        change.run = RunWrite(state, finished_at=now, error=error, clear_request=True, release=True)
        data: dict[str, Any] = {"duration_s": duration}
        if error:
            data["error"] = error
        change.events.append(NewEvent(f"run_{state}", data=data))
        if state == "succeeded":
            self._hook("on_success", duration_s=duration)
        self._hook("on_complete", state=state, error=error, duration_s=duration)

    # -- compensation -----------------------------------------------------------------------

    def _begin_compensation(self, change: Change, ending: str) -> bool:
        """Create one compensation per completed step that declares one, newest first; False
        when there is nothing to undo."""
        done = [st for st in self.all_states() if st.state == "succeeded" and st.step.compensate and not (st.step.map_over and not st.item)]
        if not done:
            return False
        done.sort(key=lambda st: st.finished_at or utcnow(), reverse=True)
        for i, target in enumerate(done):
            comp = StepState(target.step, target.item, step_lifecycle("pending", f"{target.name}:compensate"), i, undoes=target)
            self.compensations.append(comp)
            change.new_steps.append(NewStepRow(comp.name, comp.item, i, "pending", [], compensates=target.name, position=i))
        change.run = RunWrite("running", error=self.failure)
        change.events.append(NewEvent("compensation_started", data={"steps": [c.label for c in self.compensations], "ending": ending}))
        return True

    def _schedule_compensation(self, change: Change) -> list[StepState]:
        """Compensations run one at a time, in order; a failed one does not stop the rest."""
        if self.stopping or self.tasks or self.run_lc.state != "running":
            return []
        now = utcnow()
        for comp in self.compensations:
            if comp.state in ("succeeded", "failed"):
                continue
            if comp.state == "waiting" and comp.next_attempt_at and comp.next_attempt_at > now:
                return []
            self._start(comp, change)
            return [comp]
        failed = [c.label for c in self.compensations if c.state == "failed"]
        error = self.failure or "failed"
        if failed:
            error += f"; compensation failed: {', '.join(failed)}"
        change.events.append(NewEvent("compensation_finished", data={"failed": failed}))
        if self.request in CANCEL_REQUESTS:  # keep why it failed, if it had failed before the cancel
            self._end(change, "cancel", "cancelled", error if failed or self.failure != "cancelled" else None)
        else:
            self._end(change, "fail", "failed", error)
        return []

    # -- hooks ------------------------------------------------------------------------------

    def _hook(self, name: str, **meta: Any) -> None:
        if name in self.wf.hooks:
            self._hooks.append((name, meta))

    async def _run_hooks(self) -> None:
        """Hooks see committed state: they run after the round that triggered them."""
        pending, self._hooks = self._hooks, []
        if self.run_lc.state != "running":  # its last: none is cut off with the process
            await settle(self._progress_hooks)
        for name, meta in pending:
            await run_hook(self.wf, self.run_id, self.input, name, meta, self._late.append)
        if self._late and self.run_lc.state != "running":
            change = self._change()
            change.events.extend(self._late)
            self._late.clear()
            await self._commit(change)

    # -- stopping ---------------------------------------------------------------------------

    def stop(self) -> None:
        """Shutdown: start no new step; running steps finish (see `interrupt` for the rest)."""
        self.stopping = True
        self._wake.set()

    def interrupt(self) -> None:
        """Shutdown now: running steps are asked to stop and their attempts abandoned."""
        self.stopping = True
        self._interrupt_tasks()

    def _interrupt_tasks(self) -> None:
        """Async steps are cancelled; sync ones stop at their next emit/checkpoint, or are
        abandoned to finish on their own."""
        self._interrupted = True
        for task, st in self.tasks.items():
            if st.ctx is not None:
                st.ctx._stopped = True
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
            try:
                owned, requested = await asyncio.to_thread(self.runtime.store.heartbeat, self.run_id, self.fence, ttl)
            except DatabaseUnavailable as exc:  # keep working; the writer waits for the database too
                log.warning("heartbeat of run %s failed: %s", self.run_id, exc)
                continue
            if not owned:
                self.interrupt()
                raise LeaseLost(self.run_id)
            self.set_request(requested)
