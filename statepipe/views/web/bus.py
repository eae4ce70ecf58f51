"""One LISTEN for the whole server, fanned out to every stream it serves.

PostgreSQL tells of each commit on one channel ("<run id>:<last seq>", store.EVENTS_CHANNEL).
The bus holds a single connection LISTENing on it, whatever the number of clients. For each run
somebody follows it keeps a Feed: the run's newest events, read from the database once per
commit however many clients wait for them, so 200 clients of one run cost one query a commit.
A client behind the feed's window (reconnecting with an old seq) reads the database itself
until it catches up. The list of runs has its own feed of changed runs (`runs_changed`)."""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import deque
from collections.abc import Callable
from typing import Any

import psycopg

from statepipe.store.records import Event
from statepipe.store.store import EVENTS_CHANNEL, RUNNABLE_CHANNEL, Store, notified
from statepipe.views.jsonl import event_line

log = logging.getLogger("statepipe.web")

WINDOW = 2000  # newest events a feed keeps for the clients that follow it live
LIST_EVERY_S = 0.2  # the list of runs is refreshed at most this often
RECONNECT_S = (0.2, 0.5, 1.0, 2.0)


Line = tuple[Event, str]  # an event and its JSON line (views.jsonl.event_line), encoded once


def lines_of(events: list[Event]) -> list[Line]:
    return [(e, event_line(e)) for e in events]


class Feed:
    """A run's live tail, each event with its JSON line, encoded once for all its clients.
    `changed` is replaced (the old one set) each time events arrive."""

    def __init__(self, last: int) -> None:
        self.events: deque[Line] = deque(maxlen=WINDOW)
        self.last = last  # the newest seq read (or, before any, the run's last seq when opened)
        self.wanted = last  # the newest seq a notice told of
        self.changed = asyncio.Event()
        self.clients = 0
        self.fetching = False

    def after(self, seq: int) -> list[Line] | None:
        """Events after `seq` from the window: [] when caught up, None when it does not reach
        back that far (the caller reads the database)."""
        if seq >= self.last:
            return []
        if self.events and self.events[0][0].seq <= seq + 1:
            first = seq + 1 - self.events[0][0].seq  # the window's seqs are consecutive
            return list(itertools.islice(self.events, first, None))
        return None

    def signal(self) -> None:
        old, self.changed = self.changed, asyncio.Event()
        old.set()


class Bus:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.feeds: dict[str, Feed] = {}
        self.runs_changed = asyncio.Event()  # replaced and set when any run commits
        self.changed_runs: set[str] = set()  # runs committed since the list streams last looked
        self.connected = asyncio.Event()
        self.on_runnable: Callable[[], None] | None = None
        self.runs_feed: RunsFeed | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._listen(), name="statepipe-bus")
        try:  # streams opened at once must not miss commits: wait for the LISTEN (briefly)
            await asyncio.wait_for(self.connected.wait(), 5.0)
        except TimeoutError:
            log.warning("the event bus is not connected yet; streams will catch up when it is")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    async def _listen(self) -> None:
        failures = 0
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(self.store.pool.conninfo, autocommit=True) as conn:
                    await conn.execute(f"LISTEN {EVENTS_CHANNEL}")
                    await conn.execute(f"LISTEN {RUNNABLE_CHANNEL}")
                    failures = 0
                    self.connected.set()
                    self._caught_up_all()  # what was committed while not listening
                    async for note in conn.notifies():
                        if note.channel == RUNNABLE_CHANNEL:
                            if self.on_runnable is not None:
                                self.on_runnable()
                            continue
                        run_id, seq = notified(note.payload)
                        self._notice(run_id, seq)
            except (psycopg.Error, OSError) as exc:
                self.connected.clear()
                delay = RECONNECT_S[min(failures, len(RECONNECT_S) - 1)]
                failures += 1
                log.warning("event bus lost the database (%s); again in %.1fs", exc, delay)
                await asyncio.sleep(delay)

    def _notice(self, run_id: str, seq: int) -> None:
        self.changed_runs.add(run_id)
        old, self.runs_changed = self.runs_changed, asyncio.Event()
        old.set()
        feed = self.feeds.get(run_id)
        if feed is not None and seq > feed.wanted:
            feed.wanted = seq
            self._fetch(run_id, feed)

    def _caught_up_all(self) -> None:
        for run_id, feed in self.feeds.items():
            feed.wanted = max(feed.wanted, feed.last + 1)  # unknown: look
            self._fetch(run_id, feed)
        old, self.runs_changed = self.runs_changed, asyncio.Event()
        old.set()

    def _fetch(self, run_id: str, feed: Feed) -> None:
        if not feed.fetching:
            feed.fetching = True
            asyncio.create_task(self._read(run_id, feed))

    async def _read(self, run_id: str, feed: Feed) -> None:
        try:
            while feed.last < feed.wanted:
                batch = await asyncio.to_thread(self.store.events_after, run_id, feed.last, WINDOW)
                if not batch:
                    break
                feed.events.extend(await asyncio.to_thread(lines_of, batch))
                feed.last = batch[-1].seq
                feed.wanted = max(feed.wanted, feed.last)
                feed.signal()
        except Exception:  # a database hiccup: the clients' own checks read again
            log.exception("reading the events of run %s failed", run_id)
            feed.signal()
        finally:
            feed.fetching = False

    async def subscribe(self, run_id: str) -> Feed:
        feed = self.feeds.get(run_id)
        if feed is None:
            run = await asyncio.to_thread(self.store.get_run, run_id)
            feed = self.feeds.get(run_id)  # another client may have opened it meanwhile
            if feed is None:
                feed = self.feeds[run_id] = Feed(run.last_seq)
        feed.clients += 1
        return feed

    def unsubscribe(self, run_id: str, feed: Feed) -> None:
        feed.clients -= 1
        if feed.clients <= 0 and self.feeds.get(run_id) is feed:
            del self.feeds[run_id]

    # -- the list of runs -----------------------------------------------------------------------

    def watch_runs(self) -> RunsFeed:
        """The feed of changed runs, read by one task however many list pages are open."""
        if self.runs_feed is None:
            self.runs_feed = RunsFeed()
            asyncio.create_task(self._read_runs(self.runs_feed), name="statepipe-runs-feed")
        self.runs_feed.clients += 1
        return self.runs_feed

    def unwatch_runs(self, feed: RunsFeed) -> None:
        feed.clients -= 1

    async def _read_runs(self, feed: RunsFeed) -> None:
        """Runs changed since the last look, read once and handed to every list stream; at most
        every LIST_EVERY_S seconds, so a run streaming tokens does not flood the list."""
        while True:
            if not self.changed_runs:  # a change noticed while the last ones were read set an event since replaced
                await self.runs_changed.wait()
            await asyncio.sleep(LIST_EVERY_S)
            ids, self.changed_runs = self.changed_runs, set()
            if not ids or feed.clients <= 0:
                continue
            try:
                runs = await asyncio.to_thread(self.store.get_runs, sorted(ids))
            except Exception:  # the database is away: the next change reads again
                log.exception("reading changed runs failed")
                self.changed_runs |= ids
                continue
            feed.add([run.as_json() for run in runs])


class RunsFeed:
    """Run documents (RunRow.as_json, without results) in the order they changed, numbered."""

    def __init__(self) -> None:
        self.docs: deque[tuple[int, dict[str, Any]]] = deque(maxlen=WINDOW)
        self.version = 0
        self.changed = asyncio.Event()
        self.clients = 0

    def add(self, docs: list[dict[str, Any]]) -> None:
        for doc in docs:
            self.version += 1
            self.docs.append((self.version, doc))
        old, self.changed = self.changed, asyncio.Event()
        old.set()

    def after(self, version: int) -> list[tuple[int, dict[str, Any]]]:
        return [(v, d) for v, d in self.docs if v > version]
