"""A run's event log read the one way every view reads it: from a sequence number on, then, when
following, the live tail until the run ends. `statepipe logs`, `control` and the HTTP streams
(views.web.streams, which waits on its server's one LISTEN instead) apply the same rules here:
which event ends a run, and that a run nobody executes is `interrupted`, not a reason to wait in
silence."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from statepipe.store.records import Event, RunRow
from statepipe.store.store import EVENTS_CHANNEL, Store, wait_for_events

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


def finished_state(run: RunRow, last: int) -> str | None:
    """The run's end when every event up to it has been read (`last`), else None."""
    return run.state if run.state in TERMINAL_EVENTS.values() and run.last_seq <= last else None


@dataclass
class Follow:
    """Iterate for the run's events after `after`, a page at a time; with `follow`, then the live
    tail until the run ends. `ended` then says how: succeeded, failed, cancelled, or
    `interrupted` (nobody executes it and `wait` is off: `on_interrupted(run)` was called)."""

    store: Store
    run_id: str
    after: int = 0
    follow: bool = False
    wait: bool = False
    on_interrupted: Callable[[RunRow], None] | None = None
    ended: str | None = None
    last: int = 0

    def __iter__(self) -> Iterator[list[Event]]:
        self.last = self.after
        if not self.follow:
            yield from self._pages()
            return
        with self.store.listening(EVENTS_CHANNEL) as conn:  # before reading: no commit slips by
            yield from self._pages()
            if self.ended is None:
                self.ended = finished_state(self.store.get_run(self.run_id), self.last)
            while self.ended is None:
                if not self.wait:
                    run = self.store.get_run(self.run_id)
                    if run.interrupted and run.last_seq <= self.last:
                        self.ended = "interrupted"
                        if self.on_interrupted is not None:
                            self.on_interrupted(run)
                        return
                wait_for_events(conn, self.run_id, RECHECK_S)
                yield from self._pages()

    def _pages(self) -> Iterator[list[Event]]:
        while True:
            batch = self.store.events_after(self.run_id, self.last, PAGE)
            if batch:
                self.last = batch[-1].seq
                self.ended = ending(batch, self.ended)
                yield batch
            if len(batch) < PAGE:
                return
