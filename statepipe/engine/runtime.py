"""A process's engine: one store, one writer, an owner id, and the runs it is executing.

The same runtime serves `run`/`resume` (one run, in this process), `worker` and `batch` (claim
whatever runs nobody holds, many at a time)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import psycopg

from statepipe.config import CHILD_SLOTS, lease_seconds
from statepipe.definition.loader import Loaded, load, load_ref
from statepipe.definition.workflow import Workflow
from statepipe.engine.distributed import ChildRunner
from statepipe.engine.executor import RunExecutor
from statepipe.engine.outputs import input_text
from statepipe.engine.pool import ProcessPool
from statepipe.engine.rerun import RerunPlan
from statepipe.engine.writer import Listener, Writer
from statepipe.errors import (
    ConflictError,
    DatabaseUnavailable,
    InputError,
    LeaseLost,
    NotFoundError,
    StatepipeError,
)
from statepipe.lifecycles import RUN_FINISHED
from statepipe.processes import new_owner_id, owner_is_dead
from statepipe.store.records import Change, Claim, ClaimRequest, Event, NewEvent, NewRun, NewStepRow, RunRow, RunSnapshot, StepRow, utcnow
from statepipe.store.store import CONTROL_CHANNEL, RUNNABLE_CHANNEL, Store, first_line

log = logging.getLogger("statepipe.runtime")
MAX_CHILD_DEPTH = 8  # child workflows nest at most this deep


@dataclass(frozen=True)
class Outcome:
    run_id: str
    state: str  # succeeded, failed, cancelled, paused, or "interrupted" (left resumable)
    result: Any = None  # the run's result, when it succeeded
    run: RunRow | None = None  # the run row as the executor left it


# a run this worker failed to execute is passed over for SETBACK_S, doubling each time in a row
SETBACK_S = 1.0
SETBACK_MAX_S = 300.0


@dataclass(frozen=True)
class _Setback:
    times: int  # failures in a row
    until: float  # monotonic time until which the run is passed over
    reason: str  # what was said on stderr


class Runtime:
    def __init__(
        self, store: Store, *, lease_ttl: float | None = None, linger: float = 0.05, processes: int | None = None,
        child_slots: int = CHILD_SLOTS,
    ) -> None:
        """`processes`: how many process steps run at once (default: the CPUs this process may use);
        `child_slots`: how many children of distributed fan-outs this process runs at once."""
        self.store = store
        self.writer = Writer(store, linger=linger)
        self.pool = ProcessPool(processes)  # for process steps; starts no process until one needs it
        self.owner = new_owner_id()
        self.lease_ttl = lease_ttl or lease_seconds()
        self.executors: dict[str, RunExecutor] = {}
        # called when a run ends, on the views' thread; close() (or writer.flush()) waits for them
        self.finished: list[Callable[[Outcome], None]] = []
        self._fresh: dict[str, RunSnapshot] = {}  # runs created here, not yet executed
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runnable: asyncio.Event | None = None  # set (on the loop) when a run may be claimable
        self._refill: Callable[[str, Change], asyncio.Future[list[Event]] | None] | None = None  # see `releasing`
        self._closing = threading.Event()
        self._control: threading.Thread | None = None
        self._stopping = False
        self._setbacks: dict[str, _Setback] = {}  # runs this worker let go because of an error
        self._definitions: dict[tuple[str, str], Loaded] = {}  # (ref, name) -> loaded and validated once
        self._children_task: asyncio.Task[None] | None = None
        self.local_children: dict[str, set[str]] = {}  # parent run -> child runs executing here
        self.children: ChildRunner | None = None  # runs distributed fan-outs' children (engine/distributed.py)
        self.child_slots = child_slots

    def listen(self, fn: Listener) -> None:
        self.writer.add_listener(fn)

    # -- creating ---------------------------------------------------------------------------

    def create_run(
        self,
        loaded: Loaded,
        run_input: dict[str, Any],
        *,
        detach: bool = False,
        batch: tuple[str, int] | None = None,
        dry_run: bool = False,
        no_cache: bool = False,
        output_dir: str | None = None,
    ) -> str:
        """Validate the input and record a pending run: owned by this runtime from the first
        instant (so no worker grabs it), or, with `detach`, left for any worker."""
        return self.create_runs(loaded, [run_input], detach=detach, batch_id=batch[0] if batch else None,
                                batch_indices=[batch[1]] if batch else None, dry_run=dry_run, no_cache=no_cache,
                                output_dir=output_dir)[0]

    def create_runs(
        self,
        loaded: Loaded,
        inputs: Sequence[dict[str, Any]],
        *,
        detach: bool = False,
        batch_id: str | None = None,
        batch_indices: Sequence[int] | None = None,
        dry_run: bool = False,
        no_cache: bool = False,
        output_dir: str | None = None,
        parent: tuple[str, str, int] | None = None,
    ) -> list[str]:
        """Many runs of one workflow in one transaction (see create_run); a batch's runs carry
        their line numbers in `batch_indices`. `output_dir` (absolute), recorded in the
        run_created event, is where later commands keep writing the run's event file.
        `parent`: (run id, key, depth) of a child workflow's parent (ctx.run_workflow)."""
        wf = loaded.workflow
        owner = None if detach else self.owner
        fingerprint = wf.fingerprint()
        steps = _initial_steps(wf)
        runs: list[NewRun] = []
        for offset, run_input in enumerate(inputs):
            if not isinstance(run_input, dict):
                raise InputError(f"run input must be a JSON object, got {type(run_input).__name__}")
            wf.check_input(run_input)
            input_json = input_text(run_input)
            event = NewEvent("run_created", data={"workflow": wf.name, "input": run_input, **({"dry_run": True} if dry_run else {}),
                                                  **({"output_dir": output_dir} if output_dir else {}),
                                                  **({"parent_run": parent[0], "parent_key": parent[1]} if parent else {})})
            runs.append(NewRun(
                str(uuid.uuid4()), wf.name, loaded.ref, input_json, steps, event, owner=owner, batch_id=batch_id,
                batch_index=batch_indices[offset] if batch_indices is not None else None, dry_run=dry_run,
                no_cache=no_cache, fingerprint=fingerprint, result_step=wf.result_step,
                parent_run=parent[0] if parent else None, parent_key=parent[1] if parent else None,
                depth=parent[2] if parent else 0,
            ))
        created = self.store.create_runs(runs, ttl=self.lease_ttl)
        if owner is not None:
            now = utcnow()
            for r in runs:  # what a snapshot would read back, kept so execute() need not read it
                row = RunRow(
                    r.id, r.workflow, r.workflow_ref, "pending", json.loads(r.input_json), error=None, created_at=now,
                    started_at=None, finished_at=None, updated_at=now, last_seq=1, owner=owner, lease_expires_at=None,
                    fencing_token=1, dry_run=dry_run, no_cache=no_cache, fingerprint=fingerprint,
                    result_step=wf.result_step, parent_run=r.parent_run, parent_key=r.parent_key, depth=r.depth,
                )
                self._fresh[r.id] = _untouched(row, steps)
        self.writer.dispatch(created)
        return [r.id for r in runs]

    # -- executing --------------------------------------------------------------------------

    async def execute(
        self,
        run_id: str,
        loaded: Loaded | None = None,
        fence: int | None = None,
        *,
        rerun: RerunPlan | None = None,
        strict: bool = False,
        claimed: Claim | None = None,
    ) -> Outcome:
        """Claim the run (refusing a live owner), execute it to an end, release the lease.
        `claimed`: the run as `work()` just claimed it (with `fence`).

        Steps whose code changed since the run recorded it are run again with their
        descendants, unless `strict`, which refuses instead."""
        self._ensure_control()
        snap = self._fresh.pop(run_id, None)
        if snap is not None:
            fence = 1
        elif fence is None:
            fence = await asyncio.to_thread(
                self.store.claim, run_id, self.owner, self.lease_ttl, owner_is_dead, rerun is not None
            )
        state, result, final = "interrupted", None, None
        lost = False
        try:
            if snap is None and claimed is not None:
                claimed_wf = self._load_for(claimed.run).workflow
                if _is_untouched(claimed.run, claimed_wf):
                    snap = _untouched(claimed.run, _initial_steps(claimed_wf))
                    if claimed.created is not None:  # the views start the run's story at its beginning
                        self.writer.dispatch([claimed.created])
            if snap is None:
                snap = await asyncio.to_thread(self.store.snapshot, run_id)
            await self._adopt_children(snap)
            left_running = any(s.state == "running" for s in snap.steps)
            prior = await asyncio.to_thread(self.store.last_owner, run_id) if left_running else None
            executor = self._executor(snap, fence, loaded, rerun, strict, prior)
            self.executors[run_id] = executor
            if any(s.distribute for s in executor.wf.steps) and self._refill is None:  # a worker's runner runs already
                self._run_children(own=True)
            if self._stopping:  # stopped before its executor existed (a reader gone at once)
                executor.stop()
            state = await executor.execute()
            result = executor.result() if state == "succeeded" else None
            final = executor.final_run()
        except LeaseLost:
            lost = True  # someone else holds it now: nothing of ours to release
            raise
        finally:
            self.executors.pop(run_id, None)
            if not lost and state not in RUN_FINISHED + ("paused", "waiting"):  # those released in their last commit
                await asyncio.to_thread(self.store.release, run_id, fence)
            await self._children_done()
        outcome = Outcome(run_id, state, result, final)
        if state in RUN_FINISHED and final is not None and final.parent_run and final.parent_key:
            await asyncio.to_thread(self._tell_parent, final, state, result)
        if state in RUN_FINISHED:
            for fn in self.finished:
                self.writer.after_views(partial(fn, outcome))
        return outcome

    def _executor(
        self, snap: RunSnapshot, fence: int, loaded: Loaded | None, rerun: RerunPlan | None, strict: bool, prior: str | None,
    ) -> RunExecutor:
        """The executor of a claimed run, the rerun it is asked for (plus any code changes) checked."""
        wf = (loaded or self._load_for(snap.run)).workflow
        rerun = self._code_changes(snap, wf, rerun, strict)
        if rerun is not None:
            rerun.check(wf, snap)
        return RunExecutor(self, wf, snap, fence, rerun, prior)

    def rerun_detached(self, run_id: str, rerun: RerunPlan, *, strict: bool = False) -> str:
        """Apply a rerun without executing it: the run reopened and what the plan touches
        invalidated, in one commit, then released, which wakes the workers; one of them executes
        it. For callers that must not hold the run while it executes (an HTTP request). Returns
        the run's state before."""
        fence = self.store.claim(run_id, self.owner, self.lease_ttl, owner_is_dead, True)
        try:
            snap = self.store.snapshot(run_id)
            prior = self.store.last_owner(run_id) if any(s.state == "running" for s in snap.steps) else None
            self.writer.submit(self._executor(snap, fence, None, rerun, strict, prior).reopening()).result()
        finally:
            self.store.release(run_id, fence)
        return snap.run.state

    # -- child workflows (ctx.run_workflow) -------------------------------------------------------

    def start_child(self, parent: RunRow, key: str, loaded: Loaded, run_input: dict[str, Any]) -> str:
        """The child run a parent's step asks for under `key`: the one it started before (a
        parent resumed after a crash finds it), else a new one. Called from the step's thread.
        In a worker the child is left to the workers; otherwise this process executes it."""
        child = self.store.child_of(parent.id, key)
        in_worker = self._refill is not None
        if child is None:
            if parent.depth + 1 > MAX_CHILD_DEPTH:
                raise InputError(
                    f"run {parent.id}: {loaded.workflow.name} would nest {parent.depth + 1} child workflows deep "
                    f"(at most {MAX_CHILD_DEPTH}): do workflows start each other in a cycle?"
                )
            (child_id,) = self.create_runs(loaded, [run_input], detach=in_worker, parent=(parent.id, key, parent.depth + 1))
        else:
            child_id = child.id
            if child.state in RUN_FINISHED:
                self._tell_parent(child, child.state, None)  # its end was never told (a crash between)
                return child_id
        if not in_worker and self._loop is not None:
            self.local_children.setdefault(parent.id, set()).add(child_id)
            self._loop.call_soon_threadsafe(lambda: asyncio.create_task(self._execute_child(parent.id, child_id, loaded)))
        return child_id

    async def _adopt_children(self, snap: RunSnapshot) -> None:
        """A parent taken up again whose steps wait for child runs: a child that ended without
        its parent hearing of it (a crash between) is told now; one nobody executes any more is
        executed here (outside a worker; in one, the workers take it up, as any interrupted run)."""
        waits = {
            s.waiting_for["name"] for s in snap.steps
            if s.state == "waiting" and s.waiting_for and str(s.waiting_for.get("name", "")).startswith("child:")
        }
        if not waits:
            return
        told = False
        for child in snap.child_runs:
            name = f"child:{child.parent_key}"
            if name not in waits or name in snap.inputs:
                continue
            if child.state in RUN_FINISHED:
                await asyncio.to_thread(self._tell_parent, child, child.state, None)
                told = True
            elif self._refill is None:
                self.local_children.setdefault(snap.run.id, set()).add(child.id)
                asyncio.create_task(self._execute_child(snap.run.id, child.id, None))
        if told:
            snap.inputs.update(await asyncio.to_thread(self.store.inputs, snap.run.id))

    async def _execute_child(self, parent_id: str, child_id: str, loaded: Loaded | None) -> None:
        try:
            await self.execute(child_id, loaded)
        except ConflictError:  # executed elsewhere: its end reaches the parent from there
            pass
        except StatepipeError as exc:
            log.error("child run %s of %s: %s", child_id, parent_id, exc)
        finally:
            parent = self.executors.get(parent_id)
            if parent is not None:  # its outcome is told (stored) by now: the parent reads it first
                await parent.reload_inputs()
            self.local_children.get(parent_id, set()).discard(child_id)

    def _tell_parent(self, child: RunRow, state: str, result: Any) -> None:
        """Deliver a finished child's outcome to its parent's waiting step (waits.send)."""
        from statepipe.engine.waits import send

        assert child.parent_run is not None and child.parent_key is not None
        if result is None and state == "succeeded":
            result = self.store.results([child.id]).get(child.id)
        outcome = {"run_id": child.id, "workflow": child.workflow, "state": state, "result": result, "error": child.error}
        try:
            send(self.store, child.parent_run, f"child:{child.parent_key}", outcome)
        except (ConflictError, NotFoundError) as exc:  # told before, or the parent is gone or over
            log.info("child run %s: %s", child.id, exc)

    @staticmethod
    def _code_changes(snap: RunSnapshot, wf: Workflow, rerun: RerunPlan | None, strict: bool) -> RerunPlan | None:
        recorded = snap.run.fingerprint
        if not recorded:
            return rerun
        now = wf.fingerprint()
        changed = [name for name, fp in now.items() if name in recorded and recorded[name] != fp]
        if not changed:
            return rerun
        if strict:
            raise ConflictError(f"run {snap.run.id}: the code of {', '.join(changed)} changed since the run recorded it (--strict)")
        plan = rerun or RerunPlan(reason="code changed")
        plan.steps = [*plan.steps, *(c for c in changed if c not in plan.steps)]
        plan.reason = f"{plan.reason}; code changed: {', '.join(changed)}" if rerun else f"code changed: {', '.join(changed)}"
        plan.fingerprint = now
        plan.changed = changed
        return plan

    def fork(
        self, source: str, loaded: Loaded | None = None, from_steps: Sequence[str] = (), output_dir: str | None = None,
        *, detach: bool = False,
    ) -> str:
        """A new run that starts with the source's outputs upstream of `from_steps` (all of its
        completed steps when none are named) and runs the rest; the source is not touched.
        `output_dir`: recorded as in create_runs; `detach`: left to the workers, not executed here."""
        snap = self.store.snapshot(source)
        wf = (loaded or self._load_for(snap.run)).workflow
        for name in from_steps:
            if name not in wf:
                raise InputError(f"workflow {wf.name} has no step {name!r}")
        redo = set(wf.descendants(from_steps))
        done = {s.name for s in snap.parents() if s.state in ("succeeded", "skipped")}
        keep = [s.name for s in wf.steps if s.name in done and s.name not in redo]
        run_id = str(uuid.uuid4())
        event = NewEvent("run_created", data={"workflow": wf.name, "input": snap.run.input, "forked_from": source, "reused": keep,
                                              **({"output_dir": output_dir} if output_dir else {})})
        input_json = json.dumps(snap.run.input, ensure_ascii=False)
        run = NewRun(
            run_id, wf.name, snap.run.workflow_ref, input_json, [], event, owner=self.owner, fingerprint=wf.fingerprint()
        )
        self.writer.dispatch([self.store.fork_run(source, run, keep, ttl=self.lease_ttl)])
        if detach:
            self.store.release(run_id, 1)  # created under its first fence; releasing wakes the workers
        return run_id

    async def execute_many(self, run_ids: Sequence[str], concurrency: int, loaded: Loaded | None = None) -> list[Outcome]:
        """Execute runs with at most `concurrency` in flight; commits of all of them share batches."""
        gate = asyncio.Semaphore(concurrency)

        async def one(run_id: str) -> Outcome:
            async with gate:
                return await self.execute(run_id, loaded)

        return list(await asyncio.gather(*(one(r) for r in run_ids)))

    async def work(
        self,
        concurrency: int,
        *,
        workflows: Sequence[str] | None = None,
        batch_id: str | None = None,
        until_idle: bool = False,
        poll: float = 2.0,
    ) -> int:
        """Claim and execute runs nobody holds until stopped (or, `until_idle`, until none is
        left); returns how many runs this worker finished.

        A run's slot is refilled by a claim that rides in the transaction of its last commit
        (`releasing`): a claim of its own after that commit would cost every run a transaction
        and a round trip before the next one starts. The run claimed so may start while the
        one it replaces is still being told its commit is done; it has no step left to run."""
        self._ensure_control()
        self._runnable = runnable = asyncio.Event()  # set by a notice, and when a slot frees up
        active: dict[str, asyncio.Task[Outcome]] = {}
        handed: set[str] = set()  # active runs whose releasing commit is queued: slot handed on
        refills: list[asyncio.Future[list[Claim]]] = []  # claims riding with those commits
        finished = 0
        unfinished = False  # a run ended here unfinished (waiting, say) since the last claim began

        def request(limit: int) -> ClaimRequest:
            # not the runs it executes either: their lease may have lapsed while the database
            # was away, and a claim would fence their executor out mid-step
            return ClaimRequest(
                self.owner, self.lease_ttl, limit, workflows=tuple(workflows) if workflows else None,
                batch_id=batch_id, skip=tuple(sorted(self.passed_over() | active.keys())),
            )

        def free() -> int:
            return concurrency - len(active) + len(handed) - len(refills)

        def start(run_id: str, fence: int, claim: Claim | None = None) -> None:
            task = asyncio.create_task(self._execute_claimed(run_id, fence, claim), name=run_id)
            active[run_id] = task
            task.add_done_callback(ended)

        def ended(task: asyncio.Task[Outcome]) -> None:
            nonlocal finished, unfinished
            if active.get(task.get_name()) is task:  # not a later claim of the same run
                del active[task.get_name()]
                handed.discard(task.get_name())
            if not task.cancelled() and task.exception() is None and task.result().state in RUN_FINISHED:
                finished += 1
            else:
                unfinished = True
            runnable.set()

        def refill(run_id: str, change: Change) -> asyncio.Future[list[Event]] | None:
            if self._stopping or run_id not in active or run_id in handed:
                return None
            handed.add(run_id)
            done, claimed = self.writer.committed_claiming(change, request(1))
            refills.append(claimed)
            claimed.add_done_callback(refilled)
            return done

        def refilled(fut: asyncio.Future[list[Claim]]) -> None:
            refills.remove(fut)
            if fut.cancelled():
                return
            if fut.exception() is None:
                for claim in fut.result():
                    start(claim.run.id, claim.run.fencing_token, claim)
            else:
                log.warning("cannot claim runs: %s", fut.exception())
            runnable.set()

        self._refill = refill
        children = self._run_children(own=False, workflows=tuple(workflows) if workflows else None)
        host = self.owner.partition(":")[0]
        next_orphans = 0.0  # when to look for runs whose owner died on this host, once a poll
        try:
            while not self._stopping:
                runnable.clear()  # before claiming: a run released meanwhile sets it again
                unfinished = False
                claimed: list[Claim] = []
                try:
                    if free() > 0 and time.monotonic() >= next_orphans:
                        next_orphans = time.monotonic() + poll
                        orphans = await asyncio.to_thread(self.store.claim_orphans, request(free()), host, owner_is_dead)
                        for run_id, fence in orphans:
                            start(run_id, fence)
                    if free() > 0:
                        claimed = await self.writer.claim(request(free()))  # rides with the commits in flight
                except DatabaseUnavailable as exc:
                    log.warning("cannot claim runs: %s", exc)
                for claim in claimed:
                    start(claim.run.id, claim.run.fencing_token, claim)
                # `unfinished`: a run ended while this claim passed it over as active, and may
                # be claimable now (a parent its last child woke): claim once more
                if until_idle and not active and not claimed and not refills and not unfinished:
                    break
                # a slot freeing up or a notice sets it; with room for more, poll as well
                await _until(runnable, poll if free() > 0 else None)
        finally:
            self._refill = None
        while active or refills:  # a claim riding with a last commit may still bring a run
            runnable.clear()
            await (asyncio.wait(list(active.values())) if active else runnable.wait())
        if self.children is not None:
            self.children.close()
        await children
        return finished

    def _run_children(self, *, own: bool, workflows: tuple[str, ...] | None = None) -> asyncio.Task[None]:
        """Start claiming distributed fan-outs' children (once per process): in a worker, any run's
        (`workflows` only, if given); otherwise (`own`) only those of the runs executing here."""
        if self.children is None or self._children_task is None or self._children_task.done():
            self.children = ChildRunner(self, self.child_slots, workflows=workflows, own=own)
            self._children_task = asyncio.create_task(self.children.serve(), name="statepipe-children")
        elif not own:  # a worker now: any run's
            self.children.own, self.children.workflows = False, workflows
        return self._children_task

    async def _children_done(self) -> None:
        """Outside a worker, once no run executing here has distributed fan-outs: the children
        this process still runs end (a drain lets them finish; an interrupt stops them) before
        the run's execution returns, so none is cut off with the event loop."""
        runner, task = self.children, self._children_task
        if runner is None or task is None or not runner.own or runner.wanted():
            return
        runner.close()
        await task

    @property
    def stopping(self) -> bool:
        return self._stopping

    def definition(self, ref: str, name: str) -> Loaded:
        """The definition a run was started from (by name when that file is not on this
        machine), loaded once per process: a worker runs thousands of runs of a few workflows,
        and a module, once imported, is not imported again anyway."""
        key = (ref, name)
        if key not in self._definitions:
            try:
                self._definitions[key] = load_ref(ref)
            except NotFoundError:
                self._definitions[key] = load(name)
        return self._definitions[key]

    def releasing(self, run_id: str, change: Change) -> asyncio.Future[list[Event]] | None:
        """Commit the change that releases a run (ended, or paused; no hook left to run) with,
        in a worker, a claim for its slot in the same transaction: the change's future, or None
        outside a worker (the caller commits it as any other)."""
        return self._refill(run_id, change) if self._refill is not None else None

    async def _execute_claimed(self, run_id: str, fence: int, claim: Claim | None = None) -> Outcome:
        """Execute a run this worker claimed (`claim`: as claim_runs returned it). A run whose
        execution fails (its code missing or broken here, or a bug that escapes the executor)
        must neither stop the worker nor be claimed again at once: the run is released, and
        this worker passes it over for a while (see set_back)."""
        if self._stopping:  # claimed as the worker began to drain: left to another worker
            await asyncio.to_thread(self.store.release, run_id, fence)
            return Outcome(run_id, "interrupted")
        try:
            outcome = await self.execute(run_id, fence=fence, claimed=claim)
        except LeaseLost as exc:  # fenced out: the run is in other hands, held by their lease
            log.warning("%s; left to it", exc)
            return Outcome(run_id, "interrupted")
        except (Exception, SystemExit) as exc:  # noqa: BLE001 - SystemExit too: a workflow file calling sys.exit() at import
            self.set_back(run_id, exc)
            return Outcome(run_id, "error")
        self._setbacks.pop(run_id, None)
        return outcome

    def set_back(self, run_id: str, exc: BaseException) -> None:
        """Pass the run over for SETBACK_S seconds, doubling with each failure in a row up to
        SETBACK_MAX_S: a later attempt may succeed (a fix deployed, the database back), an
        immediate one would fail the same way, over and over. Said on stderr once per reason."""
        reason = first_line(exc).removeprefix(f"run {run_id}: ")
        if not isinstance(exc, StatepipeError):  # a bug's message means little without its type
            reason = f"{type(exc).__name__}: {reason}" if str(exc) else type(exc).__name__
        last = self._setbacks.get(run_id)
        times = last.times + 1 if last else 1
        wait = min(SETBACK_S * 2 ** (times - 1), SETBACK_MAX_S)
        self._setbacks[run_id] = _Setback(times, time.monotonic() + wait, reason)
        if last is None or last.reason != reason:
            log.error("run %s: %s; this worker tries it again later, waiting longer each time", run_id, reason)

    def passed_over(self) -> set[str]:
        """The runs this worker is not to claim now (see set_back)."""
        now = time.monotonic()
        return {run_id for run_id, s in self._setbacks.items() if s.until > now}

    # -- control ----------------------------------------------------------------------------

    def _ensure_control(self) -> None:
        """One LISTEN connection per process carries pause/cancel requests to our executors and
        wakes idle workers when a run becomes claimable."""
        self._loop = asyncio.get_running_loop()  # the loop of the latest execute()/work()
        if self._control is not None:
            return
        self._control = threading.Thread(target=self._listen_control, name="statepipe-control", daemon=True)
        self._control.start()

    def _listen_control(self) -> None:
        """Reconnects every second while the database is away, saying so once. Notices sent
        meanwhile are lost, so once back it wakes the workers to claim at once (executors read
        their requests with each heartbeat)."""
        lost = False
        while not self._closing.is_set():
            try:
                with self.store.listening(CONTROL_CHANNEL, RUNNABLE_CHANNEL) as conn:
                    if lost:
                        lost = False
                        self._wake_workers()
                    while not self._closing.is_set():
                        for note in conn.notifies(timeout=1.0):
                            self._on_notify(note.channel, note.payload)
            except (DatabaseUnavailable, psycopg.Error) as exc:
                if not lost:
                    log.warning("control channel lost: %s", exc)
                lost = True
                self._closing.wait(1.0)

    def _on_notify(self, channel: str, payload: str) -> None:
        if channel == RUNNABLE_CHANNEL:
            self._wake_workers()
            return
        run_id, _, kind = payload.partition(":")
        executor = self.executors.get(run_id)
        if self._loop is None:
            return
        if executor is not None:
            self._loop.call_soon_threadsafe(executor.set_request, kind or None)
        if self.children is not None and kind:
            self._loop.call_soon_threadsafe(self.children.stop_run, run_id, kind)

    def stop(self) -> None:
        """Drain: claim nothing more, start no new step; running steps finish."""
        self._stopping = True
        self._wake_workers()
        for ex in list(self.executors.values()):
            ex.stop()

    def _load_for(self, run: RunRow) -> Loaded:
        return self.definition(run.workflow_ref, run.workflow)

    def _wake_workers(self) -> None:
        """Wake `work()` and the children's runner from any thread (the control listener, a signal
        handler)."""
        if self._loop is None:
            return
        try:
            if self._runnable is not None:
                self._loop.call_soon_threadsafe(self._runnable.set)
            if self.children is not None:
                self._loop.call_soon_threadsafe(self.children.wake)
        except RuntimeError:  # the loop has closed: nobody is waiting
            pass

    def interrupt(self) -> None:
        for ex in list(self.executors.values()):
            ex.interrupt()
        if self.children is not None:
            self.children.interrupt()

    def close(self) -> None:
        self._closing.set()
        self.pool.close()  # before the writer: a process step's last events go through it
        self.writer.close()
        self.store.pool.close()


def _is_untouched(run: RunRow, wf: Workflow) -> bool:
    """Nothing has happened to the run since it was created, so its rows are exactly what
    create_runs wrote for this definition: every change of state comes with an event, and the
    only event is run_created (a fork copies rows, hence not forked); same fingerprints, same steps."""
    return run.state == "pending" and run.last_seq == 1 and run.forked_from is None and run.fingerprint == wf.fingerprint()


def _initial_steps(wf: Workflow) -> list[NewStepRow]:
    """The step rows a new run of `wf` starts with."""
    return [
        NewStepRow(s.name, "", None, "pending", list(s.depends_on), fanout=s.map_over is not None, position=i)
        for i, s in enumerate(wf.steps)
    ]


def _untouched(run: RunRow, steps: Sequence[NewStepRow]) -> RunSnapshot:
    """The snapshot of a run nothing has happened to (its rows are `steps` as created), built
    without reading it back."""
    rows = [StepRow(s.name, "", None, s.fanout, None, s.state, s.depends_on, 0, None, None, None, None) for s in steps]
    return RunSnapshot(dataclasses.replace(run, steps_total=len(rows)), rows)


async def _until(event: asyncio.Event, timeout: float | None) -> None:
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
    except TimeoutError:
        pass
