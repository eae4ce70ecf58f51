"""A workflow's hooks, called the same way wherever a step ran: by the run's executor after the
round that triggered them, and by the worker that ran a distributed fan-out's child for what
only it sees (that child's progress, retries and failure). A hook's error is reported as a
`hook_failed` event in the run's log; the run goes on."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

from statepipe.engine.context import HookContext
from statepipe.engine.tracebacks import error_text
from statepipe.store.records import NewEvent
from statepipe.store.storable import mended

if TYPE_CHECKING:
    from statepipe.definition.workflow import Workflow

Report = Callable[[NewEvent], None]


def call_hook(wf: Workflow, run_id: str, run_input: dict[str, Any], name: str, meta: dict[str, Any], report: Report) -> Any:
    """Call hook `name` if the workflow has one; what it returned (an awaitable, for an async hook)."""
    hook = wf.hooks.get(name)
    if hook is None:
        return None
    try:
        return hook(HookContext(run_id, wf.name, run_input), meta)
    except Exception as exc:
        report(_failed(name, exc))
        return None


async def run_hook(wf: Workflow, run_id: str, run_input: dict[str, Any], name: str, meta: dict[str, Any], report: Report) -> None:
    """call_hook, and an async hook awaited under the same contract."""
    result = call_hook(wf, run_id, run_input, name, meta, report)
    if inspect.isawaitable(result):
        await _settled(result, name, report)


def start_hook(
    wf: Workflow, run_id: str, run_input: dict[str, Any], name: str, meta: dict[str, Any], report: Report,
    loop: asyncio.AbstractEventLoop, running: set[Future[None]],
) -> None:
    """call_hook from any thread (a step reporting its progress calls on_progress from its own):
    an async hook runs on `loop`, the engine's, rather than being dropped unawaited, and stays in
    `running` until it is done (see settle)."""
    result = call_hook(wf, run_id, run_input, name, meta, report)
    if inspect.isawaitable(result):
        started = asyncio.run_coroutine_threadsafe(_settled(result, name, report), loop)
        running.add(started)
        started.add_done_callback(running.discard)


async def settle(running: set[Future[None]]) -> None:
    """Wait for the hooks start_hook left running: before a run, or a child's attempt, ends."""
    if running:
        await asyncio.wait([asyncio.wrap_future(f) for f in list(running)])


async def _settled(result: Awaitable[Any], name: str, report: Report) -> None:
    try:
        await result
    except Exception as exc:
        report(_failed(name, exc))


def _failed(name: str, exc: Exception) -> NewEvent:
    return NewEvent("hook_failed", data={"hook": name, "error": mended(error_text(exc))})
