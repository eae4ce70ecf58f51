"""Daemon threads for sync steps, reused between steps.

Daemon, so that a step abandoned after a timeout or shutdown never holds the process open (a
ThreadPoolExecutor joins its threads at exit); pooled, because starting a thread per step costs
more than many steps do."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable


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
