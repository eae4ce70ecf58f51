"""A run's events over HTTP, resumable: Server-Sent Events (each event's `id:` is its seq, so a
browser's EventSource reconnects with Last-Event-ID and misses nothing) or NDJSON (the lines of
`statepipe logs`); and the stream of changed runs the dashboard's list follows.

The rules are client.events's (which event ends a run, when a run is interrupted); the waiting is
the bus's (one LISTEN for the whole server). A run stream ends with the run: an `end` event
says how. A run nobody executes gets one `interrupted` event and the stream stays open, since a
worker may take it up; the client decides."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import StreamingResponse
from sse_starlette.sse import EventSourceResponse

from statepipe.client.events import PAGE, RECHECK_S, ending, finished_state
from statepipe.views.web.bus import Bus, Line, lines_of

router = APIRouter(tags=["streams"])
PING_S = 15  # an SSE comment this often keeps proxies from closing a quiet stream
NO_BUFFERING = {"X-Accel-Buffering": "no", "Cache-Control": "no-cache"}
NDJSON = "application/x-ndjson"


async def follow_run(bus: Bus, run_id: str, after: int, follow: bool) -> AsyncIterator[tuple[str, Any]]:
    """("events", [Line, ...]) as they come, ("interrupted", run document) once when nobody
    executes the run, then ("end", state) when it ends, or at once without `follow`."""
    store = bus.store
    last, ended = after, None
    feed = await bus.subscribe(run_id) if follow else None
    told_interrupted = False
    look = True  # read the run row: at the start, and when the stream has been quiet a while
    try:
        while True:
            changed = feed.changed if feed is not None else None
            batch = feed.after(last) if feed is not None else None
            if batch is None:  # behind the live window (or not following): the database
                batch = await asyncio.to_thread(_read_lines, store, run_id, last)
            if batch:
                last = batch[-1].event.seq
                ended = ending([line.event for line in batch], ended)
                yield "events", batch
                if ended is not None and feed is not None and not feed.after(last):
                    break
                continue
            if feed is None or changed is None:
                break  # not following: everything there is has been sent
            if look:  # not per commit, and shared by the feed's clients (Feed.look)
                run = await feed.look(store, run_id, last)
                bus.seen(run_id, feed, run.last_seq)
                ended = ended or finished_state(run, last)
                if ended is not None:
                    break
                if run.interrupted and run.last_seq <= last and not told_interrupted:
                    told_interrupted = True
                    yield "interrupted", run.as_json()
                elif not run.interrupted:
                    told_interrupted = False
            try:
                async with asyncio.timeout(RECHECK_S):  # unlike wait_for, no task per wait
                    await changed.wait()
                look = False
            except TimeoutError:
                look = True
        yield "end", ended or (await asyncio.to_thread(store.get_run, run_id)).shown_state
    finally:
        if feed is not None:
            bus.unsubscribe(run_id, feed)


def _read_lines(store: Any, run_id: str, after: int) -> list[Line]:
    return lines_of(store.events_after(run_id, after, PAGE))


def _start(after: int | None, last_event_id: str | None) -> int:
    """Where a stream starts: after Last-Event-ID (a reconnecting EventSource), else `after`."""
    if last_event_id and last_event_id.strip().isdigit():
        return int(last_event_id.strip())
    return after or 0


def _sse(items: AsyncIterator[tuple[str, Any]]) -> AsyncIterator[bytes | dict[str, str]]:
    """Events as SSE frames, a batch in one write (sse-starlette sends bytes as they are), each
    frame encoded once by the feed for all its clients."""

    async def frames() -> AsyncIterator[bytes | dict[str, str]]:
        async for kind, value in items:
            if kind == "events":
                yield b"".join(line.frame for line in value)
            else:
                yield {"event": kind, "data": json.dumps({"state": value} if kind == "end" else value)}

    return frames()


def _ndjson(items: AsyncIterator[tuple[str, Any]]) -> AsyncIterator[str]:
    async def lines() -> AsyncIterator[str]:
        async for kind, value in items:
            if kind == "events":
                yield "".join(line.json + "\n" for line in value)

    return lines()


@router.get(
    "/api/runs/{run_id}/events",
    summary="A run's events as Server-Sent Events or NDJSON, resumable by seq",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}, NDJSON: {}}}},
)
async def run_events(
    request: Request,
    run_id: str,
    after: Annotated[int | None, Query(ge=0, description="Start after this seq (Last-Event-ID wins).")] = None,
    follow: Annotated[bool, Query(description="Keep streaming live events until the run ends.")] = True,
    format: Annotated[str | None, Query(pattern="^(sse|ndjson)$", description="sse (default) or ndjson; or send Accept.")] = None,
    accept: Annotated[str | None, Header()] = None,
    last_event_id: Annotated[str | None, Header()] = None,
) -> Any:
    """Each SSE event's `id` is its seq and its data the event's JSON line (as `statepipe logs`
    prints it); reconnect with `Last-Event-ID` (or `?after=SEQ`) and you receive exactly the
    events after it, then the live tail. An `interrupted` event says nobody executes the run
    (the stream stays open); an `end` event, `{"state": ...}`, closes it."""
    bus: Bus = request.app.state.bus
    # a followed run's full id needs no lookup: 200 clients connecting cost no query each
    full = run_id if run_id in bus.feeds else await asyncio.to_thread(bus.store.resolve_run_id, run_id)
    items = follow_run(bus, full, _start(after, last_event_id), follow)
    if format == "ndjson" or (format is None and NDJSON in (accept or "")):
        return StreamingResponse(_ndjson(items), media_type=NDJSON, headers=NO_BUFFERING)
    return EventSourceResponse(_sse(items), ping=PING_S, headers=NO_BUFFERING)


@router.get("/api/events", summary="Every run's changes, for a live list of runs", response_class=StreamingResponse)
async def runs_events(request: Request) -> Any:
    """Server-Sent Events named `run`, each the run's document as in `GET /api/runs` (without
    its result), whenever it changes; at most five a second per run. Not resumable: after a
    reconnect, read the list again."""
    bus: Bus = request.app.state.bus

    async def frames() -> AsyncIterator[dict[str, str]]:
        feed = bus.watch_runs()
        seen = feed.version
        try:
            while True:
                changed = feed.changed
                for version, doc in feed.after(seen):
                    seen = version
                    yield {"event": "run", "data": json.dumps(doc, default=str)}
                await changed.wait()
        finally:
            bus.unwatch_runs(feed)

    return EventSourceResponse(frames(), ping=PING_S, headers=NO_BUFFERING)
