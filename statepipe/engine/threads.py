"""Threads around the event loop: daemon threads for sync steps, reused between steps, and the
inbox through which threads hand results back to a loop.

Daemon, so that a step abandoned after a timeout or shutdown never holds the process open (a
ThreadPoolExecutor joins its threads at exit); pooled, because starting a thread per step costs
more than many steps do."""

from __future__ import annotations

import asyncio
import queue
import threading
import weakref
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any


class DaemonPool:
    def __init__(self) -> None:
        self._tasks: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._idle = 0
        self._lock = threading.Lock()

    def submit(self, task: Callable[[], None]) -> None:
        """Run `task` now on an idle thread, or on a new one: never queued behind another step."""
        with self._lock:
            spawn = self._idle == 0
            if not spawn:
                self._idle -= 1
        if spawn:
            threading.Thread(target=self._work, name="statepipe-step", daemon=True).start()
        self._tasks.put(task)

    def _work(self) -> None:
        while True:
            self._tasks.get()()
            with self._lock:
                self._idle += 1


POOL = DaemonPool()


class ThreadCall:
    """`fn(**kwargs)` on a pool thread once started, its outcome delivered to a future of the
    calling loop. Made apart from `start`, so a step's call can be readied while the commit of its
    start is in flight.

    A loop with nothing else to do can also `wait` for it on the spot, for a moment: a sync
    step's outcome reaching the loop through its self-pipe costs the thread a wake-up write and
    the loop a poll, about 20 us a step on two cores, a fortieth of a short step's cost to a
    process executing one run. Whichever way the outcome arrives, it is settled once."""

    def __init__(self, fn: Callable[..., Any], kwargs: dict[str, Any]) -> None:
        loop = asyncio.get_running_loop()
        self.future: asyncio.Future[Any] = loop.create_future()
        self._box = inbox(loop)
        self._call: tuple[Callable[..., Any], dict[str, Any]] | None = (fn, kwargs)
        self._lock = threading.Lock()
        self._finished = False
        # while the loop is blocked in `wait`: what wakes it, and the outcome it settles itself (an
        # Event only then: most calls, a worker's among many runs, are never waited for)
        self._waiter: threading.Event | None = None
        self._outcome: tuple[Any, BaseException | None] | None = None

    def start(self) -> asyncio.Future[Any]:
        """Hand the call to a pool thread; returns `future`, which its outcome settles."""
        POOL.submit(self._run)
        return self.future

    def _run(self) -> None:
        assert self._call is not None
        fn, kwargs = self._call
        self._call = None
        try:
            outcome: tuple[Any, BaseException | None] = (fn(**kwargs), None)
        except BaseException as exc:  # delivered to the awaiting task, where it is classified
            outcome = (None, exc)
        # the loop may start a consumer the moment it hears, while this frame is still alive: it
        # holds neither inputs nor output by then, so a released output is really let go
        del fn, kwargs
        with self._lock:
            self._finished = True
            waiter = self._waiter
            if waiter is not None:
                self._outcome = outcome
        if waiter is None:
            self._box.put(settle, self.future, *outcome)
        del outcome
        if waiter is not None:
            waiter.set()

    def wait(self, timeout: float) -> bool:
        """Block the calling loop (its thread) up to `timeout` seconds for the outcome; True once
        the future is settled."""
        with self._lock:
            if self._finished:  # its outcome went to the loop's inbox
                return False
            self._waiter = waiter = threading.Event()
        waiter.wait(timeout)
        with self._lock:
            self._waiter = None
            outcome, self._outcome = self._outcome, None
        if outcome is None:
            return False
        settle(self.future, *outcome)
        return True


class LoopInbox:
    """Calls handed to one event loop from other threads, run in order on the loop. Each
    `call_soon_threadsafe` writes to the loop's self-pipe and costs a loop turn; the inbox wakes
    the loop once for everything that arrives before it gets round to it (twenty runs' steps
    finishing together, a batch of commits)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._calls: list[tuple[Callable[..., None], tuple[Any, ...]]] = []
        self._lock = threading.Lock()

    def put(self, fn: Callable[..., None], *args: Any) -> None:
        with self._lock:
            self._calls.append((fn, args))
            if len(self._calls) > 1:  # a wake-up is already on its way
                return
        try:
            self._loop.call_soon_threadsafe(self._drain)
        except RuntimeError:  # the loop has closed: nobody is waiting any more
            pass

    def _drain(self) -> None:
        with self._lock:
            calls, self._calls = self._calls, []
        for fn, args in calls:
            fn(*args)


_INBOXES: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LoopInbox] = weakref.WeakKeyDictionary()
_INBOXES_LOCK = threading.Lock()


def inbox(loop: asyncio.AbstractEventLoop) -> LoopInbox:
    with _INBOXES_LOCK:
        box = _INBOXES.get(loop)
        if box is None:
            box = _INBOXES[loop] = LoopInbox(loop)
        return box


def settle(fut: Future[Any] | asyncio.Future[Any], result: Any, exc: BaseException | None) -> None:
    """Give a waiter its result, or the error, unless it stopped waiting meanwhile (an abandoned
    attempt, a cancelled task). An asyncio future must be settled on its loop: through `inbox`."""
    if fut.done():
        return
    if exc is not None:
        fut.set_exception(exc)
    else:
        fut.set_result(result)
