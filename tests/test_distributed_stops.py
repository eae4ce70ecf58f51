"""Stopping a distributed fan-out (issue 18) when workers died, a child failed, the run timed out
or an optional fan-out had ended: found in a review of the first version, where each of these
runs stayed `running` for ever, ran past its timeout, or lost stored results. Each docstring
tells what went wrong before. Real PostgreSQL, real worker and run subprocesses, real kill -9."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from tests.test_distributed import FAST_LEASE, SPREAD, _enqueue, _reaches, _stop, _succeeded_attempts
from tests.test_faults import kill9, wait_for


def _children(store: Any, run_id: str) -> dict[str, Any]:
    return {s.item: s for s in store.fanout_children(run_id, "square")}


def _await_state(store: Any, run_id: str, target: str, timeout: float) -> None:
    """Wait for the run to reach `target`; failing, say where it rests and why."""
    deadline = time.monotonic() + timeout
    while store.get_run(run_id).state != target:
        if time.monotonic() > deadline:
            run = store.get_run(run_id)
            parent = [s.state for s in store.snapshot(run_id).steps if s.name == "square" and not s.item]
            kids = {i: (s.state, s.attempt) for i, s in _children(store, run_id).items()}
            raise AssertionError(
                f"run still {run.state} after {timeout:g}s (requested={run.requested}, fan-out {parent}, "
                f"children (state, attempt) {kids})"
            )
        time.sleep(0.2)


# -- a child whose worker died, with a request pending or its fan-out failed ---------------------


@pytest.mark.parametrize("request_", ["cancel", "pause_now"])
def test_a_request_after_a_worker_died_mid_child_is_carried_out(spawn, cli, store, request_):
    """Carried out, the dead worker's attempts recorded abandoned by the run's owner. Before: a
    worker is kill -9'd while it holds children: their rows stay `running` under a lease that
    runs out. Then the user cancels (or pauses --now) the run. claim_children passes over runs
    with a request pending, so nobody ever records those attempts abandoned; the owner counts
    them `running` (fanout_progress) and waits for them before carrying the request out
    (_handle_request: busy while any(_elsewhere)). The run stays `running`, the request pending,
    forever, although a live worker is there to take the run."""
    first = spawn("worker", **FAST_LEASE)
    run_id = _enqueue(cli, width=3, seconds=600)
    wait_for(lambda: sum(s.state == "running" for s in _children(store, run_id).values()) == 3, 60, "children running")
    kill9(first)  # the run's owner and the children's worker
    args = ("cancel", run_id) if request_ == "cancel" else ("pause", run_id, "--now")
    asking = spawn(*args, **FAST_LEASE)  # takes the run over once the dead owner's lease is out
    wait_for(lambda: store.get_run(run_id).requested is not None, 30, "the request to be stored")
    second = spawn("worker", **FAST_LEASE)
    try:
        target = "cancelled" if request_ == "cancel" else "paused"
        # leases are 2 s: anything after 30 s is stuck, not slow
        _await_state(store, run_id, target, 30)
        assert not [s for s in _children(store, run_id).values() if s.state == "running"]
    finally:
        _stop(asking, second)


PLANNED = '''
import time

from statepipe import Workflow

wf = Workflow("spread_planned")


@wf.step
def items(plan: str) -> list[int]:
    return list(range(len(plan.split(","))))


@wf.step(map_over=items, distribute=True, concurrency=8, retries=0)
def square(item: int, plan: str) -> int:
    seconds = float(plan.split(",")[item])  # negative: fails after that long
    time.sleep(abs(seconds))
    if seconds < 0:
        raise ValueError(f"item {item} is broken")
    return item
'''


def test_a_failed_child_ends_the_run_although_a_sibling_died_with_its_worker(spawn, cli, store, tmp_path):
    """The run ends failed, the dead sibling's attempt recorded abandoned. Before, with no
    request: a child fails for good, so its fan-out fails and
    claim_children no longer claims its children (the fan-out is not `running`), while a
    sibling's worker is dead. The sibling's row stays `running` for ever; the owner counts it
    in _elsewhere and waits for it (_maybe_finish) although nobody will ever take it. Three
    workers, one slot each: A owns the run and runs item 0 (8 s), B item 1 (600 s), C item 2
    (fails after 3 s). B is killed 2.4 s into item 2, so item 1's lease still holds when item
    2 fails and the fan-out fails; nothing can then take item 1 again. The run never ends."""
    path = tmp_path / "spread_planned.py"
    path.write_text(PLANNED)
    a = spawn("worker", "--children", "1", **FAST_LEASE)
    done = cli("run", str(path), "--detach", "-iplan=8,600,-3")
    assert done.returncode == 0, done.stderr
    run_id = done.stdout.strip().splitlines()[-1]
    wait_for(lambda: _children(store, run_id)["0"].state == "running", 60, "item 0 running")
    b = spawn("worker", "--children", "1", **FAST_LEASE)
    wait_for(lambda: _children(store, run_id)["1"].state == "running", 60, "item 1 running")
    c = spawn("worker", "--children", "1", **FAST_LEASE)
    wait_for(lambda: _children(store, run_id)["2"].state == "running", 60, "item 2 running")
    time.sleep(2.4)
    kill9(b)
    wait_for(lambda: _children(store, run_id)["2"].state == "failed", 30, "item 2 to fail")
    try:
        # item 0 ends about 8 s in; the dead item 1's lease ran out long before: 30 s is stuck
        _await_state(store, run_id, "failed", 30)
    finally:
        _stop(a, c)
    assert store.get_run(run_id).error == "step square failed: item 2 failed: ValueError: item 2 is broken"


# -- the run's timeout bounds a distributed fan-out ----------------------------------------------


def test_the_runs_timeout_stops_a_distributed_fan_out(cli, store, tmp_path):
    """No child starts after the timeout: the owner tells the workers to stop (a "stop" request).
    Before: Workflow(timeout=2): _check_deadline sets the failure and interrupts the executor's own
    tasks only. The distributed fan-out stays `running`, so workers (here the run's own process)
    go on claiming and starting children, and the owner waits for them (_elsewhere) before
    ending the run: every one of the 80 one-second children runs (10 s at concurrency 8) and
    the run fails only once the whole fan-out is done, however long that is."""
    path = tmp_path / "spread_timed.py"
    path.write_text(
        Path(SPREAD).read_text().replace('Workflow("spread", ', 'Workflow("spread_timed", timeout=2, ')
    )
    done = cli("run", str(path), "-iwidth=80", "-iseconds=1")
    assert done.returncode == 1, done.stderr
    run_id = store.list_runs(limit=1)[0].id
    run = store.get_run(run_id)
    assert run.state == "failed" and "timed out" in (run.error or ""), run.error
    started_late = [
        s.item for s in _children(store, run_id).values()
        if s.started_at is not None and (s.started_at - run.started_at).total_seconds() > 5  # (before: up to 10 s)
    ]
    assert not started_late, f"{len(started_late)} children started well after the run's timeout"


# -- a cancel keeps what children the owner never read did --------------------------------------

OPTIONAL = '''
import asyncio

from statepipe import Workflow

wf = Workflow("spread_optional")


@wf.step
def items(width: int = 6) -> list[int]:
    return list(range(width))


@wf.step(map_over=items, distribute=True, optional=True, retries=0)
def square(item: int, broken: int = 2) -> int:
    if item == broken:
        raise ValueError(f"item {item} is broken")
    return item * item


@wf.step
async def slow(seconds: float = 600) -> str:
    await asyncio.sleep(seconds)
    return "slow"
'''


def test_a_cancel_after_an_optional_distributed_fan_out_failed_keeps_its_childrens_results(spawn, cli, store, tmp_path):
    """The children keep their states: the owner reads them before carrying a request out.
    Before: an optional distributed fan-out fails (item 2); the run goes on with another step. The
    owner followed the fan-out by counts only (fanout_progress), so in its memory every child is
    still `pending`, as expanded; once the fan-out is failed it is no longer followed, so nothing
    brings those states up to date. A cancel then reaches _handle_request, which "cancels" every
    child it believes pending and writes those stale rows: the five children that succeeded (and
    the one that failed) are stored `cancelled`, attempt 0, their outputs no longer the step's."""
    path = tmp_path / "spread_optional.py"
    path.write_text(OPTIONAL)
    owner = spawn("run", str(path))
    wait_for(lambda: store.list_runs(limit=1), 30, "the run to be created")
    run_id = store.list_runs(limit=1)[0].id
    wait_for(lambda: [s.state for s in store.snapshot(run_id).steps if s.name == "square" and not s.item] == ["failed"],
             60, "the optional fan-out to fail")
    before = {item: s.state for item, s in _children(store, run_id).items()}
    assert sorted(before.values()) == ["failed"] + ["succeeded"] * 5, before
    assert cli("cancel", run_id).returncode == 0
    _reaches(store, run_id, "cancelled")
    owner.wait(timeout=30)
    after = {item: s.state for item, s in _children(store, run_id).items()}
    assert after == before
    done = _succeeded_attempts(store, run_id)
    assert sum(len(v) for v in done.values()) == 5
