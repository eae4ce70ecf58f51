"""One LISTEN for the whole server, fanned out to every stream it serves.

PostgreSQL tells of each commit on one channel ("<run id>:<last seq>", store.EVENTS_CHANNEL).
The bus holds a single connection LISTENing on it, whatever the number of clients. For each run
somebody follows it keeps a Feed: the run's newest events, read from the database once per
commit however many clients wait for them, so 200 clients of one run cost one query a commit.
A feed opens with the run's last WINDOW events, so clients connecting to a running run catch up
from memory too, and they share one read of the run's row (Feed.look); only a client behind the
window (reconnecting with an old seq) reads the events itself. The feeds read on a thread of
their own, so live events never queue behind the requests' reads. The list of runs has its own
feed of changed runs (`runs_changed`)."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple

import psycopg

from statepipe.store.records import Event, RunRow
from statepipe.store.store import EVENTS_CHANNEL, RUNNABLE_CHANNEL, Store, notified
from statepipe.views.jsonl import event_line

log = logging.getLogger("statepipe.web")

WINDOW = 2000  # newest events a feed keeps for the clients that follow it live
LIST_EVERY_S = 0.2  # the list of runs is refreshed at most this often
LOOK_S = 1.0  # a run row read this recently serves every client of the feed that asks
RECONNECT_S = (0.2, 0.5, 1.0, 2.0)


class Line(NamedTuple):
    """An event with its JSON line (views.jsonl.event_line) and its SSE frame, encoded once
    (off the event loop) for every client of the feed."""

    event: Event
    json: str
    frame: bytes


def lines_of(events: list[Event]) -> list[Line]:
    lines = []
    for e in events:
        text = event_line(e)
        lines.append(Line(e, text, f"id: {e.seq}\nevent: message\ndata: {text}\n\n".encode()))
    return lines


class Feed:
    """A run's live tail, each event encoded once (Line) for all its clients. `changed` is
    replaced (the old one set) each time events arrive. `opening` (Bus._open) places the window
    and starts its first read; its clients await it once, together."""

    def __init__(self, opening: Callable[[Feed], Coroutine[Any, Any, None]]) -> None:
        self.events: deque[Line] = deque(maxlen=WINDOW)
        self.last = 0  # the newest seq read (or, before any, where the window starts)
        self.wanted = 0  # the newest seq known to exist (the run's last when opened, then notices)
        self.changed = asyncio.Event()
        self.clients = 0
        self.fetching = False
        self.open = False  # opened: `last` is where the window starts, reads may begin
        self.opening = asyncio.ensure_future(opening(self))  # every subscriber awaits it
        self._look: asyncio.Future[RunRow] | None = None
        self._look_as_of = -1  # every event up to this seq was committed before that read began
        self._look_at = 0.0

    def after(self, seq: int) -> list[Line] | None:
        """Events after `seq` from the window: [] when caught up, None when it does not reach
        back that far (the caller reads the database)."""
        if seq >= self.last:
            return []
        n = self.last - seq  # the window's seqs are consecutive and end at `last`
        if n <= len(self.events):  # counted from the right: a caught-up client costs O(its batch), not O(window)
            return [self.events[i] for i in range(-n, 0)]
        return None

    def signal(self) -> None:
        old, self.changed = self.changed, asyncio.Event()
        old.set()

    async def look(self, store: Store, run_id: str, last: int) -> RunRow:
        """The run's row as of a client's `last` seq or later: a read begun after that event
        was committed and at most LOOK_S ago is shared, so clients connecting together (or
        all waking after a quiet spell) read it once, not once each."""
        now = asyncio.get_running_loop().time()
        look = self._look
        failed = look is not None and look.done() and (look.cancelled() or look.exception() is not None)
        if look is None or failed or self._look_as_of < last or now - self._look_at > LOOK_S:
            # every event a client holds was committed before now: this read reflects them all
            self._look_as_of, self._look_at = max(self.last, last), now
            look = self._look = asyncio.ensure_future(asyncio.to_thread(store.get_run, run_id))
        return await asyncio.shield(look)


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
        # the feeds' reads, apart from the default executor every request's to_thread shares
        self._reader = ThreadPoolExecutor(2, thread_name_prefix="statepipe-feeds")

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
        self._reader.shutdown(wait=False, cancel_futures=True)

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

    def seen(self, run_id: str, feed: Feed, seq: int) -> None:
        """A client's look found the run at `seq`: what a failed read or a lost notice left
        unread is read now, not at the run's next commit (it may have none)."""
        feed.wanted = max(feed.wanted, seq)
        if feed.last < feed.wanted:
            self._fetch(run_id, feed)

    def _fetch(self, run_id: str, feed: Feed) -> None:
        if feed.open and not feed.fetching:  # before it is open, a notice only raises `wanted`
            feed.fetching = True
            asyncio.create_task(self._read(run_id, feed))

    async def _read(self, run_id: str, feed: Feed) -> None:
        try:
            loop = asyncio.get_running_loop()
            while feed.last < feed.wanted:
                batch = await loop.run_in_executor(self._reader, self._read_lines, run_id, feed.last)
                if not batch:
                    break
                feed.events.extend(batch)
                feed.last = batch[-1].event.seq
                feed.wanted = max(feed.wanted, feed.last)
                feed.signal()
        except Exception:  # a database hiccup: the next notice, or a client's look, reads again
            log.exception("reading the events of run %s failed", run_id)
        finally:
            feed.fetching = False

    def _read_lines(self, run_id: str, after: int) -> list[Line]:
        return lines_of(self.store.events_after(run_id, after, WINDOW))

    async def subscribe(self, run_id: str) -> Feed:
        """The run's feed, counted before anything is awaited, so a feed its last client leaves
        while others are joining stays and is not opened twice."""
        feed = self.feeds.get(run_id)
        if feed is None or (feed.opening.done() and not feed.open):  # none, or its opening failed
            feed = self.feeds[run_id] = Feed(lambda new: self._open(run_id, new))
        feed.clients += 1
        try:
            await asyncio.shield(feed.opening)
        except BaseException:
            self.unsubscribe(run_id, feed)
            raise
        return feed

    async def _open(self, run_id: str, feed: Feed) -> None:
        """A new feed reads the run's last WINDOW events at once, which its clients wait for (an
        empty batch, then `changed`) rather than each reading them."""
        run = await asyncio.to_thread(self.store.get_run, run_id)
        feed.last = max(0, run.last_seq - WINDOW)
        feed.wanted = max(feed.wanted, run.last_seq)
        feed.open = True
        self._fetch(run_id, feed)

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
