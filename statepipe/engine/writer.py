"""The engine's one path to the store: a thread that commits queued changes in batches.

Everything queued while a transaction is in flight goes into the next one (group commit), so 100
branches finishing together cost one commit, not 100. Progress and output chunks are "soft": they
wait up to `linger` seconds for company, so a model streaming thousands of tokens a second costs
about one transaction per `linger` per process. A transition never waits: it flushes the soft
events queued before it, in order, in its own transaction.

A worker's claim (see `claim`) is queued the same way and goes in the same transaction as the
changes it finds there, so refilling the slot of a run that just ended costs no transaction of
its own.

`commit_now` is the express lane for a process executing a single run: with nothing queued and
nothing in flight there is no one to group with, and the two thread handoffs of the queue cost
more than the commit itself (about 0.4 ms a transition on two cores), so the caller commits on
its own thread. Both paths hold one lock from gathering to dispatch, so events still reach the
store and the views in the order they were queued."""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from typing import Any

import tenacity

from statepipe.engine.threads import inbox, settle
from statepipe.errors import ClaimLost, DatabaseUnavailable, LeaseLost
from statepipe.store.records import Change, Claim, ClaimRequest, Event, NewEvent
from statepipe.store.store import Store

log = logging.getLogger("statepipe.writer")

Listener = Callable[[list[Event]], None]


@dataclass
class _Item:
    change: Change
    soft: bool
    future: Future[list[Event]] | asyncio.Future[list[Event]] | None = None
    queued_at: float = field(default_factory=time.monotonic)
    parts: list[str] | None = None  # an output event's text, still growing while it waits (publish)


@dataclass
class _ClaimItem:
    request: ClaimRequest
    future: asyncio.Future[list[Claim]]
    soft = False  # like a transition: gathered with what is queued, never waiting for company


_STOP = object()


class Writer:
    def __init__(
        self,
        store: Store,
        *,
        linger: float = 0.05,
        max_batch: int = 500,
        refused_for: float = 300.0,
    ) -> None:
        self.store = store
        self.linger = linger
        self.max_batch = max_batch
        self.refused_for = refused_for
        self.transactions = 0
        self._q: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._listeners: list[Listener] = []
        self._lost: set[str] = set()
        self._merging = threading.Lock()  # guards _open_text, shared by the steps' threads and the writer
        self._open_text: dict[tuple[str, str | None, str | None, int | None], list[str]] = {}  # see publish
        self._turn = threading.Lock()  # held by whoever is committing (and, here, gathering)
        self._thread = threading.Thread(target=self._loop, name="statepipe-writer", daemon=True)
        self._thread.start()
        self._shown: queue.SimpleQueue[list[Event] | threading.Event | Callable[[], None]] = queue.SimpleQueue()
        self._views: threading.Thread | None = None

    def add_listener(self, fn: Listener) -> None:
        self._listeners.append(fn)
        self._start_views()

    def _start_views(self) -> None:
        if self._views is None:
            self._views = threading.Thread(target=self._show, name="statepipe-views", daemon=True)
            self._views.start()

    def dispatch(self, events: list[Event]) -> None:
        """Hand committed events to the views (display, JSONL files, stdout), in commit order, on
        a thread of their own: writing them out never holds up the next commit."""
        if events and self._listeners:
            self._shown.put(events)

    def after_views(self, fn: Callable[[], None]) -> None:
        """Call `fn` on the views' thread once they have every event dispatched so far (a run's
        line in results.jsonl after its events): the engine's loop does no file writes."""
        self._start_views()
        self._shown.put(fn)

    def _show(self) -> None:
        while True:
            item: list[Event] | threading.Event | Callable[[], None] | None = self._shown.get()
            events: list[Event] = []
            while isinstance(item, list):  # everything committed meanwhile goes out in one call
                events += item
                try:
                    item = self._shown.get_nowait()
                except queue.Empty:
                    item = None
            if events:
                for fn in list(self._listeners):
                    try:
                        fn(events)
                    except Exception:  # a view must never break the engine
                        log.exception("event listener failed")
            if isinstance(item, threading.Event):  # a flush: everything before it has been shown
                item.set()
            elif item is not None:
                try:
                    item()
                except Exception:
                    log.exception("run-finished callback failed")

    def submit(self, change: Change) -> Future[list[Event]]:
        """Queue a transition; the future resolves once it is committed."""
        fut: Future[list[Event]] = Future()
        self._close_text(change.run_id)
        self._q.put(_Item(change, soft=False, future=fut))
        return fut

    def committed(self, change: Change) -> asyncio.Future[list[Event]]:
        """`submit` for a coroutine: a future of the running loop, which the writer resolves
        together with every other of that loop's waiters in its batch (one wake-up, not one each)."""
        fut: asyncio.Future[list[Event]] = asyncio.get_running_loop().create_future()
        self._close_text(change.run_id)
        self._q.put(_Item(change, soft=False, future=fut))
        return fut

    def claim(self, request: ClaimRequest) -> asyncio.Future[list[Claim]]:
        """Claim runs (Store.claim_next) in the next transaction, with whatever changes it
        carries; a future of the running loop. Fails fast if the database is away, where a
        change would wait for it: the caller polls again."""
        fut: asyncio.Future[list[Claim]] = asyncio.get_running_loop().create_future()
        self._q.put(_ClaimItem(request, fut))
        return fut

    def committed_claiming(
        self, change: Change, request: ClaimRequest
    ) -> tuple[asyncio.Future[list[Event]], asyncio.Future[list[Claim]]]:
        """`committed` and `claim` in the same transaction for certain: queued as one item, so the
        writer never takes one without the other (a worker refilling the slot of a run that ends)."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[list[Event]] = loop.create_future()
        claimed: asyncio.Future[list[Claim]] = loop.create_future()
        self._close_text(change.run_id)
        self._q.put((_Item(change, soft=False, future=done), _ClaimItem(request, claimed)))
        return done, claimed

    def commit_now(self, change: Change, meanwhile: Callable[[], None] | None = None) -> list[Event] | None:
        """Commit on the caller's thread when the writer is idle: the change's events, or None
        when it must go through `submit` (a batch is queued or in flight, or the database is
        away: the writer thread waits for it without blocking the caller). Raises LeaseLost.
        `meanwhile`: see Store.commit."""
        if not self._turn.acquire(blocking=False):
            return None
        try:
            if not self._q.empty() or change.run_id in self._lost:
                return None
            try:
                (events,) = self.store.commit([change], meanwhile)
            except LeaseLost:
                self._lost.add(change.run_id)
                raise
            except DatabaseUnavailable:
                return None
            self.transactions += 1
            self.dispatch(events)
            return events
        finally:
            self._turn.release()

    def publish(self, change: Change) -> None:
        """Queue progress/output events; committed within `linger` seconds.

        An output chunk joins its attempt's text still waiting in the queue, if any, instead of
        queueing another item: a step emitting faster than the store commits holds its unsent
        text, not a million queued objects (memory stays flat while a model streams for hours).
        Any other event of the attempt, or a transition of the run, closes that text, so text
        never moves across an event."""
        if change.run_id in self._lost and change.fence is not None:  # (a claimed child's is not the owner's)
            return
        events = change.events
        if len(events) == 1 and events[0].type == "output":
            e = events[0]
            key = (change.run_id, e.step, e.item, e.attempt)
            with self._merging:
                parts = self._open_text.get(key)
                if parts is not None:
                    parts.append(e.data["text"])
                    return
                parts = self._open_text[key] = [e.data["text"]]
            self._q.put(_Item(change, soft=True, parts=parts))
            return
        with self._merging:
            for e in events:
                self._open_text.pop((change.run_id, e.step, e.item, e.attempt), None)
        self._q.put(_Item(change, soft=True))

    def _close_text(self, run_id: str) -> None:
        with self._merging:
            for key in [k for k in self._open_text if k[0] == run_id]:
                del self._open_text[key]

    def _taken(self, queued: object) -> object:
        """An item leaving the queue: its text, if still open, is closed and joined now."""
        if isinstance(queued, _Item) and queued.parts is not None:
            e = queued.change.events[0]
            with self._merging:
                key = (queued.change.run_id, e.step, e.item, e.attempt)
                if self._open_text.get(key) is queued.parts:
                    del self._open_text[key]
                e.data = {**e.data, "text": "".join(queued.parts)}
            queued.parts = None
        return queued

    def flush(self) -> None:
        """Wait until everything queued so far is committed and handed to the views."""
        self.submit(Change("", 0, [])).result()
        self.flush_views()

    def flush_views(self, timeout: float | None = None) -> None:
        """Wait (up to `timeout` seconds) until the views have everything committed so far (not
        what is still queued), run-finished callbacks included."""
        if self._views is not None:
            shown = threading.Event()
            self._shown.put(shown)
            shown.wait(timeout)

    def close(self) -> None:
        self.flush()
        self._q.put(_STOP)
        self._thread.join(timeout=10)

    # -- the thread -------------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            first = self._taken(self._q.get())
            if first is _STOP:
                return
            batch: list[_Item | _ClaimItem] = _items(first)
            with self._turn:
                stop = self._gather(batch)
                claims = [i for i in batch if isinstance(i, _ClaimItem)]
                self._commit([i for i in batch if isinstance(i, _Item) and i.change.run_id], claims)
            for item in batch:
                if isinstance(item, _Item) and not item.change.run_id and item.future is not None:
                    item.future.set_result([])
            if stop:
                return

    def _gather(self, batch: list[_Item | _ClaimItem]) -> bool:
        deadline = batch[0].queued_at + self.linger if isinstance(batch[0], _Item) and batch[0].soft else 0.0
        while len(batch) < self.max_batch:
            timeout = deadline - time.monotonic() if all(i.soft for i in batch) else 0.0
            try:
                nxt = self._taken(self._q.get(timeout=timeout) if timeout > 0 else self._q.get_nowait())
            except queue.Empty:
                return False
            if nxt is _STOP:
                return True
            batch += _items(nxt)
        return False

    def _commit(self, batch: list[_Item], claims: list[_ClaimItem]) -> None:
        batch = [i for i in batch if i.change.run_id not in self._lost or not i.soft or i.change.fence is None]
        claimed = [i for i in batch if i.change.fence is None]
        if claimed and len(claimed) < len(batch):
            # a claimed child's changes are fenced by their claim alone: in the transaction of its
            # run's owner, a lease the owner lost would take them down with its own
            self._commit([i for i in batch if i.change.fence is not None], claims)
            self._commit(claimed, [])
            return
        batch = _coalesce(batch)
        if claims:
            batch = self._commit_claiming(batch, claims)
        while batch:
            try:
                results = self._commit_retrying([i.change for i in batch])
            except LeaseLost as exc:
                batch = self._without(batch, exc.run_id)
                continue
            except ClaimLost as exc:
                batch = _without_claim(batch, exc)
                continue
            except Exception as exc:
                runs = list(dict.fromkeys(i.change.run_id for i in batch))
                if len(runs) > 1 and not isinstance(exc, DatabaseUnavailable):
                    # the database refused one run's change (text its encoding cannot hold, say):
                    # run by run, so only that run's waiters learn of it
                    for run_id in runs:
                        self._commit([i for i in batch if i.change.run_id == run_id], [])
                    return
                # the database stayed away, or refused this run's change: every waiter learns why
                _resolve([(item.future, None, exc) for item in batch if item.future is not None])
                return
            self._committed(batch, results)
            return

    def _commit_claiming(self, batch: list[_Item], claims: list[_ClaimItem]) -> list[_Item]:
        """Commit the batch with the claims riding along; what is left for `_commit` to do: the
        batch without a run whose lease was lost, or all of it if it could not be committed."""
        requests = _merged(claims)
        while True:
            try:
                results, claimed = self.store.commit_and_claim([i.change for i in batch], list(requests))
            except LeaseLost as exc:  # nothing was written, no run claimed: again without that run
                batch = self._without(batch, exc.run_id)
                continue
            except ClaimLost as exc:
                batch = _without_claim(batch, exc)
                continue
            except DatabaseUnavailable as exc:  # the claims fail fast; the changes wait for the database
                _resolve([(c.future, None, exc) for c in claims])
                return batch
            except Exception as exc:
                if batch:  # the database refused a change: the claims must not fail with it
                    self._commit_claiming([], claims)
                else:
                    _resolve([(c.future, None, exc) for c in claims])
                return batch
            break
        shares: list[_Waiter] = []
        for items, runs in zip(requests.values(), claimed):
            for item in items:  # oldest first, in the order they were asked for
                shares.append((item.future, runs[: item.request.limit], None))
                runs = runs[item.request.limit :]
        _resolve(shares)
        if batch:
            self._committed(batch, results)
        return []

    def _without(self, batch: list[_Item], lost: str) -> list[_Item]:
        """The batch without the owner's changes of a run whose lease was lost; their waiters learn it."""
        self._lost.add(lost)

        def gone(item: _Item) -> bool:
            return item.change.run_id == lost and item.change.fence is not None

        _resolve([(item.future, None, LeaseLost(lost)) for item in batch if gone(item) and item.future is not None])
        return [i for i in batch if not gone(i)]

    def _committed(self, batch: list[_Item], results: list[list[Event]]) -> None:
        self.transactions += 1
        self.dispatch([e for r in results for e in r])
        _resolve([(item.future, result, None) for item, result in zip(batch, results) if item.future is not None])

    def _commit_retrying(self, changes: list[Change]) -> list[list[Event]]:
        try:
            return self.store.commit(changes)
        except DatabaseUnavailable:  # only now is a retry policy worth building
            pass
        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception_type(DatabaseUnavailable),
            wait=_backoff,
            stop=lambda rs: not _away(rs) and (rs.seconds_since_start or 0.0) >= self.refused_for,
            reraise=True,
            before_sleep=lambda rs: log.warning("database unavailable, retrying: %s", rs.outcome.exception() if rs.outcome else ""),
        )
        return retrying(self.store.commit, changes)


def _without_claim(batch: list[_Item], lost: ClaimLost) -> list[_Item]:
    """The batch without the changes written under a fan-out child's lost claim; their waiters
    learn it. The run's other changes stand: its owner still holds it."""

    def under(item: _Item) -> bool:
        ch = item.change
        return ch.run_id == lost.run_id and any((h.name, h.item) == (lost.name, lost.item) for h in ch.claims)

    _resolve([(item.future, None, lost) for item in batch if under(item) and item.future is not None])
    return [i for i in batch if not under(i)]


def _away(state: tenacity.RetryCallState) -> bool:
    """Whether the last attempt failed for want of a connection (none to be had, or the server
    went down under it), rather than a statement the server refused (disk full, a limit): the
    first is waited out however long it lasts, the second only for `Writer.refused_for`."""
    exc = state.outcome.exception() if state.outcome else None
    sqlstate = getattr(exc.__cause__ if exc else None, "sqlstate", None)
    return sqlstate is None or sqlstate.startswith(("08", "57P"))


def _backoff(state: tenacity.RetryCallState) -> float:
    """Seconds before the next attempt: doubling from 0.2, up to 5 when the server refused the
    change, but up to 1 when it is away. While it is away an attempt waits for a connection
    (up to the pool's timeout), so this is no hot loop; and the attempt after the server is
    back is what takes the first connection, so a long wait here would be a late recovery."""
    return min(0.2 * 2 ** (state.attempt_number - 1), 1.0 if _away(state) else 5.0)


# a waiter, and what it is settled with: the events committed, or why not
_Waiter = tuple["Future[Any] | asyncio.Future[Any]", Any, "BaseException | None"]


def _items(queued: object) -> list[_Item | _ClaimItem]:
    """What one entry of the queue holds: an item, or items that go in one transaction."""
    items = list(queued) if isinstance(queued, tuple) else [queued]
    assert all(isinstance(i, (_Item, _ClaimItem)) for i in items)
    return items  # type: ignore[return-value]


def _merged(claims: list[_ClaimItem]) -> dict[ClaimRequest, list[_ClaimItem]]:
    """Claims alike but for their limit and the runs they pass over, as one request each: several
    runs of a worker ending in one commit each ask for their slot's next run (Runtime.work), and
    one scan of the runs serves them all. The worker's runs in flight, which it passes over,
    change between those asks; the merged request passes over every run any of them did."""
    alike: dict[ClaimRequest, list[_ClaimItem]] = {}
    for item in claims:
        alike.setdefault(replace(item.request, limit=0, skip=()), []).append(item)
    return {
        replace(key, limit=sum(i.request.limit for i in items), skip=tuple(sorted({r for i in items for r in i.request.skip}))): items
        for key, items in alike.items()
    }


def _resolve(outcomes: list[_Waiter]) -> None:
    """Settle waiters from the writer thread: thread futures at once, a loop's futures through its
    inbox, which wakes the loop once for all of them."""
    for fut, result, exc in outcomes:
        if isinstance(fut, asyncio.Future):
            inbox(fut.get_loop()).put(settle, fut, result, exc)
        else:
            settle(fut, result, exc)


def _coalesce(batch: list[_Item]) -> list[_Item]:
    """Merge the output chunks one attempt streamed within a batch into one event, so a model
    sending hundreds of tokens a second costs a few rows, not hundreds. Any other event of the
    attempt (or a transition of the run) closes the merge: text never moves across an event."""
    out: list[_Item] = []
    open_text: dict[tuple[str, str | None, str | None, int | None], NewEvent] = {}
    for item in batch:
        ch = item.change
        if not item.soft:
            for key in [k for k in open_text if k[0] == ch.run_id]:
                del open_text[key]
            out.append(item)
            continue
        if len(ch.events) == 1 and ch.events[0].type == "output":
            e = ch.events[0]
            key = (ch.run_id, e.step, e.item, e.attempt)
            if key in open_text:
                merged = open_text[key]
                merged.data = {"text": merged.data["text"] + e.data["text"]}
                continue
            e = NewEvent(e.type, e.step, e.item, e.attempt, dict(e.data), e.ts)
            open_text[key] = e
            item = _Item(Change(ch.run_id, ch.fence, [e]), soft=True, future=item.future, queued_at=item.queued_at)
        else:  # a progress or partial event closes its attempt's merge: text stays in order around it
            for e in ch.events:
                open_text.pop((ch.run_id, e.step, e.item, e.attempt), None)
        out.append(item)
    return out
