"""How a client executes and steers runs in its own process (client.api's Client and client.aio's
AsyncClient): one Runtime, the steering the CLI and the HTTP API do (engine.control, a rerun
plan, a feedback route, a value sent to a wait), and the JSONL files `statepipe run` writes.

The steering commands are coroutines for the loop the runtime executes on: the sync client's
own thread, or the caller's loop for AsyncClient, so an application's runs execute beside its
own tasks (their async steps may use its loop-bound clients). `launch` says how a run is then
executed on that loop and kept track of. Imported only when a client first executes or steers a
run: the CLI's quick commands import client.api, which must stay light."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Coroutine, Iterable, Sequence
from pathlib import Path
from typing import Any

from statepipe import config
from statepipe.client.api import output_dir_of
from statepipe.definition.loader import Loaded
from statepipe.definition.workflow import Workflow
from statepipe.engine.control import (
    Changed,
    control,
    resumable,
    resume_detached,
    take_over,
)
from statepipe.engine.rerun import RerunPlan, plan_rerun, rerun_reason, split_sets
from statepipe.engine.runtime import Outcome, Runtime
from statepipe.errors import ConflictError
from statepipe.processes import owner_is_dead
from statepipe.store.records import Event, RunRow, json_text
from statepipe.store.store import Store
from statepipe.views.jsonl import EventFiles, ResultWriter

log = logging.getLogger("statepipe.client")

HERE = "executing in this process"
Launch = Callable[[str, Coroutine[Any, Any, Outcome]], None]


class Outputs:
    """The files `statepipe run` writes, for the runs this process executes: each run's events
    in <folder>/<run_id>.jsonl and its summary in <folder>/results.jsonl, the folder being the
    run's own (output_dir_of). Runs it only steers (a cancel done here) are written by nobody,
    as with `statepipe cancel`; the next process to execute them backfills their files."""

    def __init__(self, store: Store, flag: str | None) -> None:
        self.store, self.flag = store, flag
        self._where: dict[str, Path] = {}
        self._views: dict[Path, tuple[EventFiles, ResultWriter]] = {}
        self._lock = threading.Lock()

    def place(self, run_id: str, recorded: str | None = None) -> None:
        """Write the run's files from now on; `recorded`: its run_created event's folder."""
        folder = config.output_dir(self.flag, recorded) if recorded else output_dir_of(self.store, run_id, self.flag)
        with self._lock:
            self._where[run_id] = folder
            if folder not in self._views:
                self._views[folder] = (EventFiles(folder, self.store), ResultWriter(folder))

    def write(self, events: list[Event]) -> None:
        by_folder: dict[Path, list[Event]] = {}
        for e in events:
            folder = self._where.get(e.run_id)
            if folder is None and e.type == "run_created" and e.data.get("output_dir"):
                self.place(e.run_id, e.data["output_dir"])  # created here to execute here (not detached)
                folder = self._where[e.run_id]
            if folder is not None:
                by_folder.setdefault(folder, []).append(e)
        for folder, batch in by_folder.items():
            self._views[folder][0].write(batch)

    def finished(self, outcome: Outcome) -> None:
        with self._lock:
            folder = self._where.pop(outcome.run_id, None)
        if folder is not None:
            self._views[folder][1](outcome)

    def close(self) -> None:
        for files, results in self._views.values():
            files.close()
            results.close()


class Engine:
    def __init__(self, store: Store, output_flag: str | None, definitions: Iterable[Loaded], launch: Launch) -> None:
        self.store = store
        self.runtime = Runtime(store)
        self.outputs = Outputs(store, output_flag)
        self.runtime.listen(self.outputs.write)
        self.runtime.finished.append(self.outputs.finished)
        self._launch = launch
        for loaded in definitions:
            self.define(loaded)

    def define(self, loaded: Loaded) -> None:
        """Know a Workflow object the runtime could not load: its ref names no file. The runtime
        looks in its cache of definitions first (also when control() executes an ownerless run
        to cancel it), so there it is found."""
        self.runtime._definitions[(loaded.ref, loaded.workflow.name)] = loaded

    def workflow_of(self, run: RunRow) -> Workflow:
        """The definition the run was started from, found as a worker finds it."""
        return self.runtime._load_for(run).workflow

    # -- executing --------------------------------------------------------------------------

    def create(self, loaded: Loaded, run_input: dict[str, Any], *, detach: bool, dry_run: bool, no_cache: bool) -> str:
        """A new run: owned by this runtime from its first instant, or with `detach` left to the
        workers (written where the worker runs, as `run --detach`)."""
        folder = None if detach else str(config.output_dir(self.outputs.flag).resolve())
        return self.runtime.create_run(loaded, run_input, detach=detach, dry_run=dry_run, no_cache=no_cache, output_dir=folder)

    def execute(
        self, run_id: str, loaded: Loaded | None = None, *, fence: int | None = None, rerun: RerunPlan | None = None,
        strict: bool = False,
    ) -> None:
        """Execute the run on the runtime's loop, in the background (a run created here, or
        one `claim` just claimed, with its fence)."""
        self._launch(run_id, self.runtime.execute(run_id, loaded, fence, rerun=rerun, strict=strict))

    def claim(self, run_id: str, finished_ok: bool = False) -> int:
        """Own the run before it is executed, so that a live owner elsewhere is refused to the
        caller's face rather than in the background (blocking: call it on a thread)."""
        fence = self.store.claim(run_id, self.runtime.owner, self.runtime.lease_ttl, owner_is_dead, finished_ok)
        self.outputs.place(run_id)
        return fence

    # -- steering (coroutines for the runtime's loop) ---------------------------------------

    async def resume(self, run_id: str, *, detach: bool, strict: bool) -> dict[str, str]:
        if not detach:  # a definition this process cannot load is said now, not in the background
            await asyncio.to_thread(lambda: self.workflow_of(self.store.get_run(run_id)))
        run = await asyncio.to_thread(resumable, self.store, run_id)
        if detach:
            return (await asyncio.to_thread(resume_detached, self.runtime, run_id)).as_json()
        fence = await asyncio.to_thread(self.claim, run_id)
        self.execute(run_id, fence=fence, strict=strict)
        return Changed(run_id, run.state, "running", HERE).as_json()

    async def rerun(self, run_id: str, plan: RerunPlan, *, detach: bool, strict: bool) -> dict[str, str]:
        """Apply a plan as `statepipe rerun` does, a live owner paused first; executed here, or
        with `detach` by a worker."""
        await take_over(self.runtime, run_id, log.info)
        if detach:
            before = await asyncio.to_thread(self.runtime.rerun_detached, run_id, plan, strict=strict)
            return Changed(run_id, before, "running", "queued for a worker").as_json()
        before = (await asyncio.to_thread(self.store.get_run, run_id)).state
        fence = await asyncio.to_thread(self.claim, run_id, True)
        self.execute(run_id, fence=fence, rerun=plan, strict=strict)
        return Changed(run_id, before, "running", HERE).as_json()

    async def control(self, run_id: str, kind: str, wait: float) -> dict[str, str]:
        return (await control(self.runtime, run_id, kind, wait)).as_json()

    async def send(self, run_id: str, name: str, value: Any, *, detach: bool) -> dict[str, Any]:
        """Deliver a value to a wait; a run that rests waiting for it then executes here, unless
        `detach` (or a worker takes it up first)."""
        from statepipe.engine.waits import send

        doc = await asyncio.to_thread(send, self.store, run_id, name, value)
        if detach or not doc["waiting"]:
            return doc
        run = await asyncio.to_thread(self.store.get_run, run_id)
        if run.state == "waiting":
            try:
                fence = await asyncio.to_thread(self.claim, run_id)
            except ConflictError:  # a worker took it up first
                return doc
            self.execute(run_id, fence=fence)
        return doc

    # -- planning (blocking: call on a thread) ----------------------------------------------

    def plan(
        self, run_id: str, from_steps: Sequence[str], items: Sequence[str], sets: dict[str, Any],
        new_input: dict[str, Any] | None, feedback: str | None, reason: str | None,
    ) -> tuple[RerunPlan, dict[str, Any]]:
        """The rerun asked for, checked against the run (nothing written), and its summary."""
        snap = self.store.snapshot(run_id)
        wf = self.workflow_of(snap.run)
        run_sets, step_sets = split_sets(sets.items())
        said = [f"{k}={json_text(v)}" for k, v in sets.items()]
        planned = plan_rerun(
            wf, snap, from_steps=from_steps, items=items, run_sets=run_sets, step_sets=step_sets, new_input=new_input,
            feedback=feedback, reason=reason or rerun_reason(from_steps, items, said, new_input is not None),
        )
        return planned, planned.summary(wf, snap)

    def route(
        self, run_id: str, text: str, steps: Sequence[str], model: str | None, dry_run: bool,
    ) -> tuple[RerunPlan, dict[str, Any]]:
        """Feedback routed to the steps it concerns (`statepipe feedback`): the plan, and the
        document of the routing (steps, classifier, plan summary)."""
        from statepipe.llm.feedback import route

        snap = self.store.snapshot(run_id)
        wf = self.workflow_of(snap.run)
        found = route(wf, snap, text, steps, model, dry_run)
        doc = {"run_id": run_id, "routing": found.routing.model_dump(), "classifier": found.classifier,
               "plan": found.plan.summary(wf, snap)}
        return found.plan, doc

    # -- ending -----------------------------------------------------------------------------

    async def stop(self) -> None:
        """On the runtime's loop: start nothing new, stop running steps; the runs stay resumable."""
        self.runtime.stop()
        self.runtime.interrupt()

    def close(self) -> None:
        """After the runs have stopped: commits and files finished; closes the store."""
        self.runtime.close()
        self.outputs.close()
