"""ThreadCall: a sync step's call on a pool thread, settled on its loop once, whichever way its
outcome arrives (the loop's inbox, or the loop waiting on the spot)."""

from __future__ import annotations

import asyncio
import threading

import pytest

from statepipe.engine.threads import ThreadCall


def started(fn, kwargs) -> ThreadCall:
    call = ThreadCall(fn, kwargs)
    call.start()
    return call


def test_a_thread_call_settles_its_future_through_the_loop_when_nobody_waits() -> None:
    async def main() -> int:
        return await started(lambda x: x + 1, {"x": 41}).future

    assert asyncio.run(main()) == 42


def test_a_thread_call_delivers_the_step_error_to_its_future() -> None:
    def fails() -> None:
        raise ValueError("bad input")

    async def main() -> None:
        await started(fails, {}).future

    with pytest.raises(ValueError, match="bad input"):
        asyncio.run(main())


def test_waiting_on_the_spot_settles_the_future_before_the_loop_turns() -> None:
    async def main() -> tuple[bool, bool, str]:
        call = started(lambda: "done", {})
        ended = call.wait(5.0)
        return ended, call.future.done(), call.future.result()

    assert asyncio.run(main()) == (True, True, "done")


def test_waiting_on_the_spot_gives_up_after_its_timeout_and_the_loop_settles_the_call_later() -> None:
    release = threading.Event()

    def slow() -> str:
        release.wait(10)
        return "late"

    async def main() -> tuple[bool, bool, str]:
        call = started(slow, {})
        ended = call.wait(0.01)
        pending = not call.future.done()
        release.set()
        return ended, pending, await call.future

    assert asyncio.run(main()) == (False, True, "late")


def test_a_thread_call_runs_nothing_until_started() -> None:
    ran = threading.Event()

    async def main() -> tuple[bool, str]:
        call = ThreadCall(ran.set, {})
        await asyncio.sleep(0.05)
        before = ran.is_set()
        call.start()
        await call.future
        return before, "ran" if ran.is_set() else "not run"

    assert asyncio.run(main()) == (False, "ran")


def test_waiting_for_a_call_already_ended_leaves_it_to_the_loop() -> None:
    async def main() -> tuple[bool, str]:
        call = started(lambda: "early", {})
        while not call._finished:  # ended, its outcome on its way through the loop's inbox
            await asyncio.sleep(0.001)
        return call.wait(5.0), await call.future

    assert asyncio.run(main()) == (False, "early")
