"""A run's event log read the one way every view reads it: from a sequence number on, then, when
following, the live tail until the run ends. `statepipe logs`, `control` and the HTTP streams
(views.web.streams, which waits on its server's one LISTEN instead) apply the same rules here:
which event ends a run, and that a run nobody executes is `interrupted`, not a reason to wait in
silence."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from statepipe.errors import DatabaseUnavailable
from statepipe.store.records import Event, RunRow
from statepipe.store.store import (
    EVENTS_CHANNEL,
    Store,
    first_line,
    notified,
    wait_for_events,
)

PAGE = 5000  # events read per query
TERMINAL_EVENTS = {"run_succeeded": "succeeded", "run_failed": "failed", "run_cancelled": "cancelled"}
RECHECK_S = 5.0  # a quiet follower looks at the run row this often (its owner may have died)


def ending(events: list[Event], ended: str | None) -> str | None:
    """How the run stands after `events`: its terminal state, or None while it goes on (a
    resume or rerun reopens a finished run)."""
    for e in events:
        if e.type in TERMINAL_EVENTS:
            ended = TERMINAL_EVENTS[e.type]
        elif e.type in ("run_started", "run_resumed"):
            ended = None
    return ended


def event_dict(event: Event) -> dict[str, Any]:
    """The event as a line of `statepipe logs` decodes (views.jsonl.event_line): the client's
    events are those lines, without writing and parsing JSON."""
    return {**event.as_dict(), "ts": event.ts.isoformat()}


def finished_state(run: RunRow, last: int) -> str | None:
    """The run's end when every event up to it has been read (`last`), else None."""
    return run.state if run.state in TERMINAL_EVENTS.values() and run.last_seq <= last else None


@dataclass
class Follow:
    """Iterate for the run's events after `after`, a page at a time; with `follow`, then the live
    tail until the run ends. `ended` then says how: succeeded, failed, cancelled, or
    `interrupted` (nobody executes it and `wait` is off: `on_interrupted(run)` was called);
    it stays None when following stopped after `timeout` seconds."""

    store: Store
    run_id: str
    after: int = 0
    follow: bool = False
    wait: bool = False
    on_interrupted: Callable[[RunRow], None] | None = None
    timeout: float | None = None
    ended: str | None = None
    last: int = 0

    def __iter__(self) -> Iterator[list[Event]]:
        self.last = self.after
        if not self.follow:
            yield from self._pages()
            return
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        with self.store.listening(EVENTS_CHANNEL) as conn:  # before reading: no commit slips by
            yield from self._pages()
            if self.ended is None:
                self.ended = finished_state(self.store.get_run(self.run_id), self.last)
            while self.ended is None:
                if not self.wait and self._interrupted(self.store.get_run(self.run_id)):
                    return
                quiet = _quiet_s(deadline)
                if quiet <= 0:
                    return
                wait_for_events(conn, self.run_id, quiet)
                yield from self._pages()

    def _interrupted(self, run: RunRow) -> bool:
        """Whether nobody executes the run and every event of it has been read: it ends here."""
        if run.interrupted and run.last_seq <= self.last:
            self.ended = "interrupted"
            if self.on_interrupted is not None:
                self.on_interrupted(run)
            return True
        return False

    def _pages(self) -> Iterator[list[Event]]:
        while True:
            batch = self.store.events_after(self.run_id, self.last, PAGE)
            if batch:
                yield self._took(batch)
            if len(batch) < PAGE:
                return

    def _took(self, batch: list[Event]) -> list[Event]:
        """A page read: where the next one starts, and whether the run ended in it."""
        self.last = batch[-1].seq
        self.ended = ending(batch, self.ended)
        return batch


def _quiet_s(deadline: float | None) -> float:
    """How long to wait for a commit before looking at the run again (<= 0: time is up)."""
    return RECHECK_S if deadline is None else min(RECHECK_S, deadline - time.monotonic())


class AsyncFollow(Follow):
    """Follow for asyncio, by the same rules: `async for batch in AsyncFollow(...)`. The waiting
    is done on the event loop (a LISTEN connection of its own), never holding a thread: an
    application may follow many runs at once. The reads are short queries, made on threads."""

    async def __aiter__(self) -> AsyncIterator[list[Event]]:
        self.last = self.after
        if not self.follow:
            async for batch in self._apages():
                yield batch
            return
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        try:
            conn = await psycopg.AsyncConnection.connect(self.store.pool.conninfo, autocommit=True)
        except psycopg.OperationalError as exc:
            raise DatabaseUnavailable(f"lost the database connection: {first_line(exc)}") from exc
        async with conn:
            await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(EVENTS_CHANNEL)))
            async for batch in self._apages():
                yield batch
            if self.ended is None:
                self.ended = finished_state(await asyncio.to_thread(self.store.get_run, self.run_id), self.last)
            while self.ended is None:
                if not self.wait and self._interrupted(await asyncio.to_thread(self.store.get_run, self.run_id)):
                    return
                quiet = _quiet_s(deadline)
                if quiet <= 0:
                    return
                await _committed(conn, self.run_id, quiet)
                async for batch in self._apages():
                    yield batch

    async def _apages(self) -> AsyncIterator[list[Event]]:
        while True:
            batch = await asyncio.to_thread(self.store.events_after, self.run_id, self.last, PAGE)
            if batch:
                yield self._took(batch)
            if len(batch) < PAGE:
                return


async def _committed(conn: psycopg.AsyncConnection[Any], run_id: str, timeout: float) -> None:
    """wait_for_events on an async connection: until a commit of `run_id`, or `timeout` seconds."""
    deadline = time.monotonic() + timeout
    try:
        while (left := deadline - time.monotonic()) > 0:
            async for note in conn.notifies(timeout=left, stop_after=1):
                if notified(note.payload)[0] == run_id:
                    return
    except psycopg.OperationalError as exc:
        raise DatabaseUnavailable(f"lost the database connection: {first_line(exc)}") from exc
