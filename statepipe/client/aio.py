"""The asyncio client: the same methods as client.api's Client, awaited. Reads are the sync
client's, on threads. Executing and steering are not: runs execute on the caller's event loop
(an application's runs beside its own tasks, their async steps free to use its loop-bound
clients), and following a run waits on that loop, holding no thread."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Coroutine, Iterable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, Self

from statepipe.client.api import (
    CLOSE_S,
    Client,
    inspect_document,
    report_background,
    settle,
)
from statepipe.client.events import AsyncFollow, event_dict
from statepipe.errors import LeaseLost

if TYPE_CHECKING:
    from statepipe.client.engine import Engine
    from statepipe.definition.workflow import Workflow
    from statepipe.engine.runtime import Outcome


class AsyncClient:
    """Client for asyncio: `async with AsyncClient() as client: run = await client.start(...)`.
    Runs started without `detach` execute on the event loop that started them, while it runs
    and the client is open; `await client.close()` interrupts them (resumable). The arguments
    are Client's."""

    def __init__(
        self, database_url: str | None = None, *, output_dir: str | None = None, workflows: Iterable[Workflow] = (),
    ) -> None:
        self._sync = Client(database_url, output_dir=output_dir, workflows=workflows)
        self._engine: Engine | None = None
        self._tasks: dict[str, asyncio.Task[Outcome]] = {}  # runs executing on the caller's loop

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        return repr(self._sync).replace("statepipe.Client", "statepipe.AsyncClient")

    async def start(
        self, workflow: str | Workflow, input: dict[str, Any] | None = None, *, detach: bool = False,
        dry_run: bool = False, no_cache: bool = False,
    ) -> AsyncRunHandle:
        """Start a run and return at once (see Client.start). Without `detach` it executes on
        this event loop, as a task of its own."""
        loaded, run_input = await asyncio.to_thread(self._sync._startable, workflow, input, dry_run)
        engine = await self._engine_()
        if not isinstance(workflow, str):  # known to this loop's runtime too, for resume and cancel
            engine.define(loaded)
        run_id = await asyncio.to_thread(engine.create, loaded, run_input, detach=detach, dry_run=dry_run, no_cache=no_cache)
        if not detach:
            engine.execute(run_id, loaded)
        return AsyncRunHandle(self, run_id)

    async def get(self, run_id: str) -> AsyncRunHandle:
        """The run with this id or unique prefix of it (NotFoundError if none or several)."""
        store = await asyncio.to_thread(self._sync._store_)
        return AsyncRunHandle(self, await asyncio.to_thread(store.resolve_run_id, run_id))

    async def runs(
        self, status: str | Sequence[str] = (), workflow: str | None = None, since: str | datetime | None = None,
        limit: int = 20, batch: str | None = None,
    ) -> list[dict[str, Any]]:
        """Runs newest first, as `statepipe list --json` prints them (see Client.runs)."""
        return await asyncio.to_thread(self._sync.runs, status, workflow, since, limit, batch)

    async def inspect(self, run_id: str) -> dict[str, Any]:
        """The document `statepipe inspect RUN --json` prints."""
        return await asyncio.to_thread(self._sync.inspect, run_id)

    async def close(self) -> None:
        """Stop executing and let go of the database: runs executing on this loop are
        interrupted (their running steps stop) and stay resumable."""
        engine, self._engine = self._engine, None
        if engine is not None:
            await engine.stop()
            live = [t for t in self._tasks.values() if not t.done()]
            if live:
                await asyncio.wait(live, timeout=CLOSE_S)
            await asyncio.to_thread(engine.close)
        await asyncio.to_thread(self._sync.close)

    async def _engine_(self) -> Engine:
        """The runtime executing this client's runs on the running loop."""
        if self._engine is None:
            store = await asyncio.to_thread(self._sync._store_)
            import importlib

            module = await asyncio.to_thread(importlib.import_module, "statepipe.client.engine")  # slow: off the loop
            self._engine = module.Engine(store, self._sync._output_dir, self._sync._definitions.values(), self._launch)
        return self._engine

    def _launch(self, run_id: str, work: Coroutine[Any, Any, Outcome]) -> None:
        task = asyncio.get_running_loop().create_task(work, name=f"statepipe run {run_id}")
        self._tasks[run_id] = task
        task.add_done_callback(lambda t: report_background(run_id, t))

    async def _ended(self, run_id: str) -> str | None:
        store = await asyncio.to_thread(self._sync._store_)
        last = (await asyncio.to_thread(store.get_run, run_id)).last_seq
        reading = AsyncFollow(store, run_id, last, follow=True, wait=True)
        async for _ in reading:
            pass
        return reading.ended


class AsyncRunHandle:
    """One run, for asyncio: RunHandle's methods, awaited (`await run.state()` is a method here)."""

    def __init__(self, client: AsyncClient, run_id: str) -> None:
        self._client = client
        self.id = run_id

    def __repr__(self) -> str:
        return f"<AsyncRunHandle {self.id}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AsyncRunHandle) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    async def state(self) -> str:
        """The state now, as `statepipe list` shows it (see RunHandle.state)."""
        store = await asyncio.to_thread(self._client._sync._store_)
        return (await asyncio.to_thread(store.get_run, self.id)).shown_state

    async def result(self, timeout: float | None = None) -> Any:
        """Wait for the run to end and return its result; RunFailed, RunCancelled, and
        TimeoutError after `timeout` seconds (see RunHandle.result)."""
        try:
            async with asyncio.timeout(timeout):
                task = self._client._tasks.get(self.id)
                if task is not None:
                    try:
                        await asyncio.shield(task)
                    except LeaseLost:  # another executor took it over: followed in the store below
                        pass
                ended = await self._client._ended(self.id)
        except TimeoutError:
            raise TimeoutError(f"run {self.id} did not end within {timeout:g}s") from None
        assert ended is not None  # followed without a timeout of its own: until the run ends
        store = await asyncio.to_thread(self._client._sync._store_)
        return await asyncio.to_thread(settle, store, self.id, ended)

    async def events(self, after: int = 0, follow: bool = True, *, wait: bool = False) -> AsyncIterator[dict[str, Any]]:
        """`async for event in run.events(after=N)`: the dicts of `statepipe logs` lines (see
        RunHandle.events); waiting for live events holds no thread."""
        store = await asyncio.to_thread(self._client._sync._store_)
        async for batch in AsyncFollow(store, self.id, after, follow=follow, wait=wait):
            for e in batch:
                yield event_dict(e)

    async def inspect(self) -> dict[str, Any]:
        """The document `statepipe inspect RUN --json` prints."""
        store = await asyncio.to_thread(self._client._sync._store_)
        return await asyncio.to_thread(inspect_document, store, self.id)

    async def cancel(self, *, compensate: bool = False, wait: float = 30.0) -> dict[str, str]:
        """Cancel the run (see RunHandle.cancel)."""
        from statepipe.engine.control import cancel_request

        return await (await self._client._engine_()).control(self.id, cancel_request(compensate), wait)

    async def pause(self, now: bool = False, *, wait: float = 0.0) -> dict[str, str]:
        """Pause the run (see RunHandle.pause)."""
        from statepipe.engine.control import pause_request

        kind, wait = pause_request(now, wait)
        return await (await self._client._engine_()).control(self.id, kind, wait)

    async def resume(self, *, detach: bool = False, strict: bool = False) -> dict[str, str]:
        """Continue the run on this event loop, or with `detach` on a worker (see RunHandle.resume)."""
        return await (await self._client._engine_()).resume(self.id, detach=detach, strict=strict)

    async def rerun(
        self, from_step: str | Sequence[str] = (), *, items: Sequence[str] = (), set: dict[str, Any] | None = None,
        input: dict[str, Any] | None = None, feedback: str | None = None, reason: str | None = None,
        strict: bool = False, detach: bool = False,
    ) -> dict[str, Any]:
        """Run steps again with everything downstream (see RunHandle.rerun)."""
        steps = [from_step] if isinstance(from_step, str) else list(from_step)
        engine = await self._client._engine_()
        plan, summary = await asyncio.to_thread(engine.plan, self.id, steps, list(items), dict(set or {}), input, feedback, reason)
        return {**await engine.rerun(self.id, plan, detach=detach, strict=strict), "plan": summary}

    async def feedback(
        self, text: str, *, steps: Sequence[str] = (), model: str | None = None, dry_run: bool = False,
        detach: bool = False,
    ) -> dict[str, Any]:
        """Route feedback to the steps it concerns and re-run them (see RunHandle.feedback)."""
        engine = await self._client._engine_()
        plan, doc = await asyncio.to_thread(engine.route, self.id, text, list(steps), model, dry_run)
        return {**doc, "applied": True, **await engine.rerun(self.id, plan, detach=detach, strict=False)}

    async def send(self, name: str, value: Any, *, detach: bool = False) -> dict[str, Any]:
        """Deliver a value to the run's wait named `name` (see RunHandle.send)."""
        return await (await self._client._engine_()).send(self.id, name, value, detach=detach)
