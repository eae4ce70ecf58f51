"""ThreadCall: a sync step's call on a pool thread, settled on its loop once, whichever way its
outcome arrives (the loop's inbox, or the loop waiting on the spot)."""

from __future__ import annotations

import asyncio
import threading

import pytest

from statepipe.engine.threads import ThreadCall


def test_a_thread_call_settles_its_future_through_the_loop_when_nobody_waits() -> None:
    async def main() -> int:
        return await ThreadCall(lambda x: x + 1, {"x": 41}).future

    assert asyncio.run(main()) == 42


def test_a_thread_call_delivers_the_step_error_to_its_future() -> None:
    def fails() -> None:
        raise ValueError("bad input")

    async def main() -> None:
        await ThreadCall(fails, {}).future

    with pytest.raises(ValueError, match="bad input"):
        asyncio.run(main())


def test_waiting_on_the_spot_settles_the_future_before_the_loop_turns() -> None:
    async def main() -> tuple[bool, bool, str]:
        call = ThreadCall(lambda: "done", {})
        ended = call.wait(5.0)
        return ended, call.future.done(), call.future.result()

    assert asyncio.run(main()) == (True, True, "done")


def test_waiting_on_the_spot_gives_up_after_its_timeout_and_the_loop_settles_the_call_later() -> None:
    release = threading.Event()

    def slow() -> str:
        release.wait(10)
        return "late"

    async def main() -> tuple[bool, bool, str]:
        call = ThreadCall(slow, {})
        ended = call.wait(0.01)
        pending = not call.future.done()
        release.set()
        return ended, pending, await call.future

    assert asyncio.run(main()) == (False, True, "late")
