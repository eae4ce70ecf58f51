"""Pause, cancel and detached resume from another terminal.

A request is written to the run row and NOTIFYed; a live owner carries it out. When nobody
owns the run (its process died, or it rests paused), the command claims the run and carries the
request out itself, through the same executor, so every change still passes the lifecycles."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

from statepipe.engine.requests import CANCEL_REQUESTS, PAUSE_REQUESTS, RETRY_REQUEST
from statepipe.engine.runtime import Runtime
from statepipe.errors import ConflictError
from statepipe.lifecycles import RUN_FINISHED, run_lifecycle
from statepipe.processes import owner_is_dead
from statepipe.store.records import Change, NewEvent, RunRow, RunWrite, utcnow
from statepipe.store.store import EVENTS_CHANNEL, Store, wait_for_events


@dataclass(frozen=True)
class Changed:
    run_id: str
    before: str
    after: str
    note: str = ""

    def as_json(self) -> dict[str, str]:
        return {"run_id": self.run_id, "before": self.before, "after": self.after, "note": self.note}


def _live_owner(run: RunRow) -> bool:
    return bool(
        run.owner
        and run.lease_expires_at is not None
        and run.lease_expires_at > utcnow()
        and not owner_is_dead(run.owner)
    )


TAKE_OVER_S = 30.0  # how long a rerun waits for a live owner to pause


def cancel_request(compensate: bool) -> str:
    return "cancel_compensate" if compensate else "cancel"


def pause_request(now: bool, wait: float) -> tuple[str, float]:
    """The request and how long to wait for a live owner: stopping running steps (`now`) is
    waited for, at least TAKE_OVER_S, so the caller learns the run is at rest."""
    return ("pause_now", max(wait, TAKE_OVER_S)) if now else ("pause", wait)


async def control(runtime: Runtime, run_id: str, kind: str, wait: float) -> Changed:
    """Carry out `kind` (pause, pause_now, cancel, cancel_compensate) on one run, and first on
    the child workflows its steps started that have not ended (a cancelled parent leaves none
    running)."""
    store = runtime.store
    run = await asyncio.to_thread(store.get_run, run_id)
    target = "cancelled" if kind in CANCEL_REQUESTS else "paused"
    if run.state in RUN_FINISHED or (kind in PAUSE_REQUESTS and run.state == "paused"):
        return Changed(run_id, run.state, run.state, f"already {run.state}")
    for child in await asyncio.to_thread(store.children_of, run_id):
        if child.state not in RUN_FINISHED:
            await control(runtime, child.id, kind, wait)
    await asyncio.to_thread(store.request, run_id, kind)
    if _live_owner(run):
        state = await asyncio.to_thread(_await_owner, runtime, run_id, target, wait)
        if state is not None:
            return Changed(run_id, run.state, state, f"carried out by {run.owner}" if state == target else f"requested; {run.owner} will carry it out")
    outcome = await runtime.execute(run_id)
    return Changed(run_id, run.state, outcome.state)


def _await_owner(runtime: Runtime, run_id: str, target: str, wait: float) -> str | None:
    """Wait for the owner to reach `target`; None when it died meanwhile (we take over)."""
    store = runtime.store
    deadline = time.monotonic() + wait
    with store.listening(EVENTS_CHANNEL) as conn:
        while True:
            run = store.get_run(run_id)
            if run.state == target or run.state in RUN_FINISHED:
                return run.state
            if not _live_owner(run):
                return None
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return run.state
            wait_for_events(conn, run_id, min(1.0, remaining))


def resumable(store: Store, run_id: str) -> RunRow:
    """The run, when resume may continue it; a pause nobody carried out yet is withdrawn, since
    resuming overrules it."""
    run = store.get_run(run_id)
    if run.state in ("succeeded", "cancelled"):
        raise ConflictError(f"run {run_id} already {run.state}; nothing to resume")
    if run.requested in PAUSE_REQUESTS:
        store.request(run_id, None)
    return run


async def take_over(runtime: Runtime, run_id: str, say: Callable[[str], None]) -> None:
    """A rerun needs the run at rest: a live owner is asked to pause at once (its running steps
    stop and, when not affected, run again after the rerun)."""
    store = runtime.store
    run = await asyncio.to_thread(store.get_run, run_id)
    if _live_owner(run):
        say(f"run {run_id} is executing on {run.owner}: pausing it first")
        await control(runtime, run_id, "pause_now", TAKE_OVER_S)
        if _live_owner(await asyncio.to_thread(store.get_run, run_id)):
            raise ConflictError(f"run {run_id} did not pause within {TAKE_OVER_S:g}s; try again")


def resume_detached(runtime: Runtime, run_id: str) -> Changed:
    """Hand a paused, ownerless or failed run to the workers without executing it here. A
    failed run gets the retry request batch uses: the worker that takes it up (at its next look
    for work) runs its failed steps again."""
    store = runtime.store
    run = store.get_run(run_id)
    if run.state == "failed":
        store.request(run_id, RETRY_REQUEST)
        return Changed(run_id, run.state, run.state, "queued for a worker: its failed steps run again")
    if run.state not in ("paused", "running", "pending"):
        raise ConflictError(f"run {run_id} is {run.state}; nothing to resume")
    fence = store.claim(run_id, runtime.owner, runtime.lease_ttl, owner_is_dead)
    try:
        if run.state == "paused":
            lc = run_lifecycle(run.state, run_id)
            lc.send("unpause")
            change = Change(run_id, fence, [NewEvent("run_resumed", data={"detached": True})], run=RunWrite(lc.state, clear_request=True))
            runtime.writer.submit(change).result()
    finally:
        store.release(run_id, fence)  # release wakes the workers
    return Changed(run_id, run.state, "running" if run.state == "paused" else run.state, "queued for a worker")
