"""statepipe from Python: a `Client` starts runs, waits for their results, follows their events,
and steers and inspects them; a `RunHandle` is one run. The CLI and the HTTP API read through
the same functions (`RunFilter` and client.runs for `list`, `inspection` for `inspect --json`,
client.events for `logs`), so a document is the same wherever it is read.

Importing this module is cheap, since `statepipe list` and `inspect` import it: the engine is
imported when a client first creates, executes or steers a run (client.engine)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections.abc import Coroutine, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self, TypeVar

from statepipe import config
from statepipe.client.events import Follow, event_dict
from statepipe.client.runs import check_states, parse_since, run_documents
from statepipe.errors import InputError, LeaseLost, RunCancelled, RunFailed

if TYPE_CHECKING:
    from statepipe.client.engine import Engine
    from statepipe.definition.loader import Loaded
    from statepipe.definition.workflow import Workflow
    from statepipe.engine.runtime import Outcome
    from statepipe.store.records import RunRow
    from statepipe.store.store import Store

log = logging.getLogger("statepipe.client")
T = TypeVar("T")

# The ref recorded for a run of a Workflow object: it names no file, so the CLI and workers
# find such a workflow by its name in their workflow folders, if at all (runtime._load_for).
IN_PROCESS = "<in-process>"
CLOSE_S = 30.0  # how long close() waits for interrupted runs to record that they stopped


# -- the documents the CLI, the HTTP API and the clients share ---------------------------------


@contextmanager
def inspection(store: Store, run_id: str) -> Iterator[dict[str, Any]]:
    """The document of `statepipe inspect --json` as it is read: its steps (and a fan-out's
    outputs) are iterators over one consistent read of the store, so the CLI writes a run of
    100,000 steps without holding it whole. A unique prefix of the id is enough."""
    from statepipe.views.render import inspect_streamed

    with store.reading(store.resolve_run_id(run_id)) as reader:
        yield inspect_streamed(reader)


def inspect_document(store: Store, run_id: str) -> dict[str, Any]:
    """`inspection`'s document read whole: GET /api/runs/{id} and the clients' `inspect()`."""
    with inspection(store, run_id) as doc:
        return _whole(doc)


def _whole(value: Any) -> Any:
    """A document with its iterators read into lists."""
    if isinstance(value, Iterator):
        return [_whole(v) for v in value]
    if isinstance(value, dict):
        return {k: _whole(v) for k, v in value.items()}
    return value


def output_dir_of(store: Store, run_id: str | None, flag: str | None) -> Path:
    """Where a run's JSONL files go: `flag` (--output-dir) or STATEPIPE_OUTPUT_DIR, else the
    folder recorded when the run was created (so a command run from elsewhere does not start a
    second tree there, backfilled from the first event), else ./output."""
    first = store.events_after(run_id, 0, 1) if run_id is not None else []
    recorded = first[0].data.get("output_dir") if first and first[0].type == "run_created" else None
    return config.output_dir(flag, recorded)


@dataclass(frozen=True)
class RunFilter:
    """Which runs `statepipe list`, GET /api/runs and `Client.runs` show, checked and read once
    (an unknown state refused, `since` parsed), so a filter means the same everywhere."""

    states: tuple[str, ...] = ()
    workflow: str | None = None
    since: datetime | None = None
    batch: str | None = None

    @classmethod
    def of(
        cls, status: str | Sequence[str] = (), workflow: str | None = None, since: str | datetime | None = None,
        batch: str | None = None, *, option: str = "--since",
    ) -> RunFilter:
        """`since`: 30m, 12h, 7d, an ISO date or a datetime; `option` names it in an error."""
        states = (status,) if isinstance(status, str) else tuple(status)
        if states:
            check_states(states)
        when = since if not isinstance(since, str) else parse_since(since, option)
        if when is not None and when.tzinfo is None:
            when = when.astimezone()
        return cls(states, workflow, when, batch)

    def rows(self, store: Store, limit: int, before: tuple[datetime, str] | None = None) -> list[RunRow]:
        """The runs, newest first; `before`: only those after this (created_at, id)."""
        return store.list_runs(states=self.states, workflow=self.workflow, since=self.since, limit=limit,
                               batch_id=self.batch, before=before)

    def count(self, store: Store, at_most: int | None = None) -> int:
        return store.count_runs(states=self.states, workflow=self.workflow, since=self.since, batch_id=self.batch,
                                at_most=at_most)


def settle(store: Store, run_id: str, ended: str) -> Any:
    """The result of a run that ended `ended`: its result, or RunFailed / RunCancelled."""
    if ended == "cancelled":
        raise RunCancelled(run_id)
    if ended == "failed":
        raise failure(store, run_id)
    return store.results([run_id]).get(run_id)


def failure(store: Store, run_id: str) -> RunFailed:
    """Where a failed run failed: the step its error names (a fan-out's failed child, whose error
    and traceback say more than its parent's), or the run alone when no step failed."""
    snap = store.snapshot(run_id)
    message = snap.run.error or f"run {run_id} failed"
    failed = [s for s in snap.parents() if s.state == "failed"]
    step = next((s for s in failed if message.startswith((f"step {s.name} ", f"step {s.name}["))), failed[0] if failed else None)
    if step is None:
        return RunFailed(run_id, message)
    row = next((c for c in snap.children(step.name) if c.state == "failed"), step) if step.fanout else step
    last = max(row.attempts, key=lambda a: a.number, default=None)
    return RunFailed(run_id, message, step.name, row.item or None, row.error, last.traceback if last else None)


def report_background(run_id: str, future: concurrent.futures.Future[Outcome] | asyncio.Future[Outcome]) -> None:
    """A run executing in the background that broke (not one that failed: that is its state)
    says so on stderr even if nobody waits for its result."""
    if not future.cancelled() and future.exception() is not None and not isinstance(future.exception(), LeaseLost):
        log.error("run %s stopped executing: %s", run_id, future.exception())


# -- the client -------------------------------------------------------------------------------


class Client:
    """Start, follow, steer and inspect runs from Python, against the database the CLI uses
    (`database_url`, else STATEPIPE_DATABASE_URL, else the embedded server).

    Runs started without `detach` execute in this process, on a thread of the client's, while it
    lives: `close()` (or leaving `with Client() as client:`) interrupts them, as Ctrl-C does
    `statepipe run`'s, and a program that ends first leaves them as a kill would; either way
    they are resumable. Their events also go to <output_dir>/<run_id>.jsonl as the CLI's do.

    `workflows`: Workflow objects (defined in a script or notebook) whose runs this client may
    resume, rerun or cancel besides those it started. Such a run records no file the CLI could
    load it from: `statepipe resume` and workers find it by its name in their workflow folders,
    if at all, so it is continued by a Client given the same Workflow object."""

    def __init__(
        self, database_url: str | None = None, *, output_dir: str | None = None, workflows: Iterable[Workflow] = (),
    ) -> None:
        self._url = config.database_url(database_url)
        self._output_dir = output_dir
        self._lock = threading.RLock()
        self._store: Store | None = None
        self._engine: Engine | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._closed = False
        self._local: dict[str, concurrent.futures.Future[Outcome]] = {}  # runs executing here
        self._definitions: dict[str, Loaded] = {}  # ref -> a Workflow object given to the client
        for wf in workflows:
            self._define(wf)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<statepipe.Client {'embedded' if self._url is None else 'external'} database{' (closed)' if self._closed else ''}>"

    # -- the API ----------------------------------------------------------------------------

    def start(
        self, workflow: str | Workflow, input: dict[str, Any] | None = None, *, detach: bool = False,
        dry_run: bool = False, no_cache: bool = False,
    ) -> RunHandle:
        """Start a run and return at once. `workflow`: a name (or file.py[:object]) found as
        `statepipe run` finds it, or a Workflow object. The input is checked first, and a bad one
        refused (InputError) with nothing stored. Without `detach` the run executes in this
        process, in the background; with it, a `statepipe worker` executes it. `dry_run`: LLM
        calls answered by a simulated model; `no_cache`: compute every step."""
        loaded, run_input = self._startable(workflow, input, dry_run)
        engine = self._engine_()
        run_id = engine.create(loaded, run_input, detach=detach, dry_run=dry_run, no_cache=no_cache)
        if not detach:
            engine.execute(run_id, loaded)
        return RunHandle(self, run_id)

    def get(self, run_id: str) -> RunHandle:
        """The run with this id or unique prefix of it (NotFoundError if none or several)."""
        return RunHandle(self, self._store_().resolve_run_id(run_id))

    def runs(
        self, status: str | Sequence[str] = (), workflow: str | None = None, since: str | datetime | None = None,
        limit: int = 20, batch: str | None = None,
    ) -> list[dict[str, Any]]:
        """Runs newest first, as the documents `statepipe list --json` prints (each run's id,
        state, input, result, error, timings, counts...): plain data, ready for JSON; `get(doc
        ["id"])` steers one. `status`: one state or several, `interrupted` included; `since`:
        30m, 12h, 7d, an ISO date or a datetime."""
        store = self._store_()
        return run_documents(store, RunFilter.of(status, workflow, since, batch).rows(store, limit))

    def inspect(self, run_id: str) -> dict[str, Any]:
        """The document `statepipe inspect RUN --json` prints: the run with its result, every
        step with its attempts, and its forks."""
        return inspect_document(self._store_(), run_id)

    def close(self) -> None:
        """Stop executing and let go of the database. Runs executing here are interrupted (their
        running steps stop) and stay resumable by `statepipe resume`, a worker or another client."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            engine, loop, thread, store = self._engine, self._loop, self._thread, self._store
        if engine is None or loop is None or thread is None:
            if store is not None:
                store.pool.close()
            return
        asyncio.run_coroutine_threadsafe(engine.stop(), loop).result()
        concurrent.futures.wait(list(self._local.values()), timeout=CLOSE_S)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(CLOSE_S)
        if not thread.is_alive():
            loop.close()
        engine.close()

    # -- the machinery ----------------------------------------------------------------------

    def _store_(self) -> Store:
        with self._lock:
            if self._closed:
                raise RuntimeError("this statepipe Client is closed")
            if self._store is None:
                from statepipe.store.database import open_store

                self._store = open_store(self._url, max_size=8)
            return self._store

    def _engine_(self) -> Engine:
        """The runtime executing this client's runs, on an event loop of its own thread."""
        with self._lock:
            if self._engine is None:
                from statepipe.client.engine import Engine

                store = self._store_()
                self._loop = asyncio.new_event_loop()
                self._thread = threading.Thread(target=self._loop.run_forever, name="statepipe-client", daemon=True)
                self._thread.start()
                self._engine = Engine(store, self._output_dir, self._definitions.values(), self._launch)
            return self._engine

    def _launch(self, run_id: str, work: Coroutine[Any, Any, Outcome]) -> None:
        assert self._loop is not None
        future = asyncio.run_coroutine_threadsafe(work, self._loop)
        self._local[run_id] = future
        future.add_done_callback(lambda f: report_background(run_id, f))

    def _call(self, work: Coroutine[Any, Any, T]) -> T:
        """A steering coroutine, run on the engine's loop (where its runtime executes runs)."""
        self._engine_()
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(work, self._loop).result()

    def _define(self, wf: Workflow) -> Loaded:
        """A Workflow object as the loader would give it, known to this client from now on."""
        from statepipe.definition.loader import Loaded

        wf.validate()
        loaded = Loaded(wf, f"{IN_PROCESS}:{wf.name}")
        with self._lock:
            self._definitions[loaded.ref] = loaded
            if self._engine is not None:
                self._engine.define(loaded)
        return loaded

    def _startable(self, workflow: str | Workflow, run_input: dict[str, Any] | None, dry_run: bool) -> tuple[Loaded, dict[str, Any]]:
        """The workflow loaded and the input checked, as `statepipe run` checks them."""
        from statepipe.client.runs import check_startable
        from statepipe.definition.loader import load

        if run_input is not None and not isinstance(run_input, dict):
            raise InputError(f"run input must be a dict, not {type(run_input).__name__}")
        loaded = load(workflow) if isinstance(workflow, str) else self._define(workflow)
        check_startable(loaded.workflow, dict(run_input or {}), dry_run)
        return loaded, dict(run_input or {})

    def _ended(self, run_id: str, timeout: float | None) -> str | None:
        """Wait for the run to end: succeeded, failed or cancelled; None after `timeout` seconds.
        Paused, waiting and interrupted runs are waited for: a resume, a value sent or a worker
        continues them."""
        store = self._store_()
        reading = Follow(store, run_id, store.get_run(run_id).last_seq, follow=True, wait=True, timeout=timeout)
        for _ in reading:
            pass
        return reading.ended


class RunHandle:
    """One run: its id, state and result, its events, and the commands that steer it (each
    returns the document its CLI command's --json prints, or the HTTP API answers)."""

    def __init__(self, client: Client, run_id: str) -> None:
        self._client = client
        self.id = run_id

    def __repr__(self) -> str:
        return f"<RunHandle {self.id}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RunHandle) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    @property
    def state(self) -> str:
        """The state now, as `statepipe list` shows it: pending, running, waiting, paused,
        succeeded, failed, cancelled, or interrupted (unfinished, and nobody executes it)."""
        return self._client._store_().get_run(self.id).shown_state

    def result(self, timeout: float | None = None) -> Any:
        """Wait for the run to end and return its result. Raises RunFailed (with the failing
        step and its error) or RunCancelled, and TimeoutError after `timeout` seconds. A paused,
        waiting or interrupted run is waited for: something may continue it."""
        deadline = None if timeout is None else time.monotonic() + timeout
        local = self._client._local.get(self.id)
        try:
            if local is not None:
                try:
                    local.result(timeout)
                except LeaseLost:  # another executor took it over: followed in the store below
                    pass
            ended = self._client._ended(self.id, None if deadline is None else max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            ended = None
        if ended is None:
            raise TimeoutError(f"run {self.id} did not end within {timeout:g}s")
        return settle(self._client._store_(), self.id, ended)

    def events(self, after: int = 0, follow: bool = True, *, wait: bool = False) -> Iterator[dict[str, Any]]:
        """The run's events after seq `after`, each the dict a `statepipe logs` line holds (seq,
        run_id, ts as ISO text, type, step, item, attempt, data). With `follow`, live events
        until the run ends; a consumer that stopped at seq N resumes with after=N, missing and
        repeating nothing. Following stops at a run nobody executes (interrupted) unless `wait`."""
        for batch in Follow(self._client._store_(), self.id, after, follow=follow, wait=wait):
            for e in batch:
                yield event_dict(e)

    def inspect(self) -> dict[str, Any]:
        """The document `statepipe inspect RUN --json` prints."""
        return inspect_document(self._client._store_(), self.id)

    def cancel(self, *, compensate: bool = False, wait: float = 30.0) -> dict[str, str]:
        """Cancel the run, as `statepipe cancel`: its live owner is asked (and given `wait`
        seconds), a run nobody executes is cancelled here. `compensate`: undo completed steps
        that declare a compensation. Returns what changed (run_id, before, after, note)."""
        from statepipe.engine.control import cancel_request

        return self._client._call(self._client._engine_().control(self.id, cancel_request(compensate), wait))

    def pause(self, now: bool = False, *, wait: float = 0.0) -> dict[str, str]:
        """Pause the run, as `statepipe pause`: no new step starts; running steps finish, or
        with `now` stop (and run again on resume). Returns what changed."""
        from statepipe.engine.control import pause_request

        kind, wait = pause_request(now, wait)
        return self._client._call(self._client._engine_().control(self.id, kind, wait))

    def resume(self, *, detach: bool = False, strict: bool = False) -> dict[str, str]:
        """Continue a paused, interrupted or failed run (completed steps are not run again), in
        this process in the background, or with `detach` on a worker. `strict`: refuse if a
        step's code changed (default: run changed steps again). ConflictError when the run
        succeeded, was cancelled, or is being executed elsewhere."""
        return self._client._call(self._client._engine_().resume(self.id, detach=detach, strict=strict))

    def rerun(
        self, from_step: str | Sequence[str] = (), *, items: Sequence[str] = (), set: dict[str, Any] | None = None,
        input: dict[str, Any] | None = None, feedback: str | None = None, reason: str | None = None,
        strict: bool = False, detach: bool = False,
    ) -> dict[str, Any]:
        """Run steps again with everything downstream, as `statepipe rerun`: every other step
        keeps its output. `from_step`: one step or several; `items`: with one fan-out step, only
        these items; `set`: {"key": value} changes the run input, {"step.param": value} one
        step's; `input`: a new run input; `feedback`: guidance for the re-run steps
        (ctx.feedback). The plan is checked first (InputError, nothing changed). A live owner is
        paused first; the run then executes here, or with `detach` on a worker. Returns what
        changed, with `plan`: the steps re-run and kept."""
        steps = [from_step] if isinstance(from_step, str) else list(from_step)
        engine = self._client._engine_()
        plan, summary = engine.plan(self.id, steps, list(items), dict(set or {}), input, feedback, reason)
        return {**self._client._call(engine.rerun(self.id, plan, detach=detach, strict=strict)), "plan": summary}

    def feedback(
        self, text: str, *, steps: Sequence[str] = (), model: str | None = None, dry_run: bool = False,
        detach: bool = False,
    ) -> dict[str, Any]:
        """Route feedback to the steps it concerns and re-run them with it in ctx.feedback, as
        `statepipe feedback -y`: a model chooses the steps (`model`, simulated with `dry_run`),
        or `steps` names them. Returns the routing (steps, guidance, reason), the classifier,
        the plan and what changed."""
        engine = self._client._engine_()
        plan, doc = engine.route(self.id, text, list(steps), model, dry_run)
        changed = self._client._call(engine.rerun(self.id, plan, detach=detach, strict=False))
        return {**doc, "applied": True, **changed}

    def send(self, name: str, value: Any, *, detach: bool = False) -> dict[str, Any]:
        """Deliver `value` to the run's wait named `name` (ctx.wait_for), as `statepipe send`:
        checked against the wait's schema (InputError if refused, nothing changed), delivered
        once (ConflictError for a second value, or a finished run); a value sent before the step
        asks is kept for it. A run resting on that wait then continues here, or with `detach`
        on a worker. Returns whom it reached."""
        return self._client._call(self._client._engine_().send(self.id, name, value, detach=detach))
