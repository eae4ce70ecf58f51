"""The serve bus's feeds in this process (issue 16): the followers of one run share the feed's
reads of its events, and a follower resuming before the feed's window reads the rest itself, so
every follower gets exactly the events after its seq, once each, whichever side of the seam."""

from __future__ import annotations

import asyncio
from typing import Any

from conftest import all_events, run_here

from statepipe.store.records import Event
from statepipe.views.web import bus as bus_module
from statepipe.views.web.bus import Bus
from statepipe.views.web.streams import follow_run


async def _follow(bus: Bus, run_id: str, after: int) -> tuple[list[Event], Any]:
    got: list[Event] = []
    end = None
    async for kind, value in follow_run(bus, run_id, after, True):
        if kind == "events":
            got += [line.event for line in value]
        elif kind == "end":
            end = value
    return got, end


def test_followers_share_the_feeds_reads_and_resume_on_either_side_of_its_window(store, monkeypatch):
    run_id = run_here(store, "crashy", pause=0, items=3)
    stored = all_events(store, run_id)
    window = 10
    assert len(stored) > 2 * window
    monkeypatch.setattr(bus_module, "WINDOW", window)  # the feed holds the last 10: 0 is before its window
    reads: list[int] = []
    events_after = store.events_after

    def counted(run: str, after: int = 0, limit: int = 5000) -> list[Event]:
        reads.append(after)
        return events_after(run, after, limit)

    monkeypatch.setattr(store, "events_after", counted)

    async def main() -> None:
        bus = Bus(store)
        await bus.start()
        try:
            inside = len(stored) - window // 2
            results = await asyncio.gather(*(_follow(bus, run_id, inside) for _ in range(50)))
            assert all(r == (stored[inside:], "succeeded") for r in results)
            assert reads == [len(stored) - window]  # the feed's one read, whatever the followers
            reads.clear()
            starts = [0, 1, len(stored) - window - 1, len(stored) - window, len(stored) - 1, len(stored)]
            results = await asyncio.gather(*(_follow(bus, run_id, after) for after in starts))
            for after, (got, end) in zip(starts, results, strict=True):
                assert (got, end) == (stored[after:], "succeeded"), after
        finally:
            await bus.stop()

    asyncio.run(main())
