"""A process's engine: one store, one writer, an owner id, and the runs it is executing."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from statepipe.config import lease_seconds
from statepipe.definition.loader import Loaded, load_ref
from statepipe.engine.executor import RunExecutor
from statepipe.engine.lease import new_owner_id, owner_is_dead
from statepipe.engine.writer import Listener, Writer
from statepipe.errors import InputError, LeaseLost
from statepipe.store.records import NewEvent, NewStepRow
from statepipe.store.store import Store


@dataclass(frozen=True)
class Outcome:
    run_id: str
    state: str  # succeeded, failed, cancelled, paused, or "interrupted" (left resumable)


class Runtime:
    def __init__(self, store: Store, *, lease_ttl: float | None = None, linger: float = 0.05) -> None:
        self.store = store
        self.writer = Writer(store, linger=linger)
        self.owner = new_owner_id()
        self.lease_ttl = lease_ttl or lease_seconds()
        self.executors: dict[str, RunExecutor] = {}

    def listen(self, fn: Listener) -> None:
        self.writer.add_listener(fn)

    def create_run(self, loaded: Loaded, run_input: dict[str, Any]) -> str:
        """Validate the input against the workflow and record a pending run."""
        wf = loaded.workflow
        if not isinstance(run_input, dict):
            raise InputError(f"run input must be a JSON object, got {type(run_input).__name__}")
        wf.check_input(run_input)
        try:
            input_json = json.dumps(run_input, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise InputError(f"run input is not JSON-serialisable: {exc}") from exc
        run_id = str(uuid.uuid4())
        steps = [
            NewStepRow(s.name, "", None, "pending", list(s.depends_on), fanout=s.map_over is not None)
            for s in wf.steps
        ]
        event = NewEvent("run_created", data={"workflow": wf.name, "input": run_input})
        created = self.store.create_run(run_id, wf.name, loaded.ref, input_json, steps, event)
        self.writer.dispatch([created])
        return run_id

    async def execute(self, run_id: str, loaded: Loaded | None = None) -> Outcome:
        """Claim the run (refusing a live owner), execute it to an end, release the lease."""
        run = await asyncio.to_thread(self.store.get_run, run_id)
        fence = await asyncio.to_thread(
            self.store.claim, run_id, self.owner, self.lease_ttl, owner_is_dead(run.owner)
        )
        released = False
        try:
            snap = await asyncio.to_thread(self.store.snapshot, run_id)
            wf = (loaded or load_ref(snap.run.workflow_ref)).workflow
            executor = RunExecutor(self, wf, snap, fence)
            self.executors[run_id] = executor
            state = await executor.execute()
            return Outcome(run_id, state)
        except LeaseLost:
            released = True  # someone else holds it now: nothing of ours to release
            raise
        finally:
            self.executors.pop(run_id, None)
            if not released:
                await asyncio.to_thread(self.store.release, run_id, fence)

    async def execute_many(self, run_ids: Sequence[str], concurrency: int, loaded: Loaded | None = None) -> list[Outcome]:
        """Execute runs with at most `concurrency` in flight; commits of all of them share batches."""
        gate = asyncio.Semaphore(concurrency)

        async def one(run_id: str) -> Outcome:
            async with gate:
                return await self.execute(run_id, loaded)

        return list(await asyncio.gather(*(one(r) for r in run_ids)))

    def stop(self) -> None:
        for ex in list(self.executors.values()):
            ex.stop()

    def interrupt(self) -> None:
        for ex in list(self.executors.values()):
            ex.interrupt()

    def close(self) -> None:
        self.writer.close()
        self.store.pool.close()
