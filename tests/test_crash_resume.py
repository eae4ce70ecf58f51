"""Crash and resume: `kill -9` a real `statepipe run` at any point, `statepipe resume` it, and the
run completes as if nothing happened.

What the store must show afterwards: every step and fan-out child succeeded with exactly one
succeeded attempt; a step that had completed before the kill was never executed again (one
attempt in total, same output, same finish time); the attempt in flight at the kill is recorded
as `abandoned` and followed by a new, succeeded attempt; and the run's result equals that of an
uninterrupted run with the same input.

The workflow is tests/workflows/crashy.py: seed -> (left, right, fan over seed's 6 items with
concurrency 3) -> join -> final, each step taking `pause` seconds while streaming output.
"""

from __future__ import annotations

import json
import signal
from typing import Any

import pytest
from conftest import EventReader, is_event, kill9, workflow_path

CRASHY = workflow_path("crashy")
ARGS = ("run", CRASHY, "-i", "pause=0.3")

# crashy's result for its default 6 items, worked out by hand from the workflow's code
EXPECTED_RESULT = {
    "total": (0 + 1 + 4 + 9 + 16 + 25) + (0 + 1 + 2 + 3 + 4 + 5),
    "right": "item-0-item-1-item-2-item-3-item-4-item-5",
}

Key = tuple[str, str]  # (step name, item key; "" for a plain step)


def _nth(n: int, predicate: Any) -> Any:
    seen = {"count": 0}

    def match(e: dict[str, Any]) -> bool:
        if predicate(e):
            seen["count"] += 1
        return seen["count"] >= n

    return match


# Where the process is killed: the event after which SIGKILL is sent, and what that moment means.
KILL_POINTS = {
    # a step is executing
    "during-seed": lambda: is_event("step_started", "seed"),
    "during-left": lambda: is_event("step_started", "left"),
    # right after a step's success was committed (the engine starts the next ready steps in the
    # same transaction, so those are in flight)
    "after-seed-succeeded": lambda: is_event("step_succeeded", "seed"),
    "after-join-succeeded": lambda: is_event("step_succeeded", "join"),
    # in the middle of the fan-out: two children done, the others running or pending
    "fanout-two-children-done": lambda: _nth(2, is_event("step_succeeded", "fan", child=True)),
}


def _key(step: Any) -> Key:
    return (step.name, step.item)


def _kill_at(spawn: Any, point: Any) -> tuple[str, EventReader]:
    """Start the run, read its events until `point`, SIGKILL it and reap it."""
    proc = spawn(*ARGS)
    reader = EventReader(proc)
    run_id = reader.run_id
    reader.until(point, timeout=60)
    kill9(proc)
    return run_id, reader


def _reference_result(proc: Any, store: Any) -> Any:
    """The result of an uninterrupted run started in the background with the same input."""
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    run_id = json.loads(out.splitlines()[0])["run_id"]
    snap = store.snapshot(run_id)
    assert snap.run.state == "succeeded"
    return snap.result()


def _assert_every_step_succeeded_once(snap: Any) -> None:
    assert snap.run.state == "succeeded"
    assert len(snap.parents()) == 6
    assert len(snap.children("fan")) == 6
    for step in snap.steps:
        states = [a.state for a in step.attempts]
        assert step.state == "succeeded", (_key(step), step.state)
        assert states.count("succeeded") == 1, (_key(step), states)
        assert states[-1] == "succeeded", (_key(step), states)
        assert [a.number for a in step.attempts] == list(range(1, len(states) + 1))
        assert step.attempt == len(states)


@pytest.mark.parametrize("point", list(KILL_POINTS), ids=list(KILL_POINTS))
def test_kill_9_then_resume_completes_without_rerunning_completed_steps(point, spawn, cli, store):
    reference = spawn(*ARGS)  # the uninterrupted run, alongside

    run_id, reader = _kill_at(spawn, KILL_POINTS[point]())

    # what the store holds at the instant of the crash
    before = store.snapshot(run_id)
    assert before.run.state == "running"
    done_before = {_key(s): s for s in before.steps if s.state == "succeeded"}
    in_flight = {_key(s) for s in before.steps if s.state == "running" and not s.fanout}
    assert in_flight, "the kill should catch at least one step executing"
    assert all(s.state in ("pending", "running", "succeeded") for s in before.steps)
    # every success the process printed had been committed before it printed it
    printed = {(e["step"], e["item"] or "") for e in reader.events if e["type"] == "step_succeeded"}
    assert printed <= set(done_before)
    # and the moment is the one the test means
    if point == "during-seed":
        assert in_flight == {("seed", "")} and not done_before
    elif point == "during-left":
        assert ("left", "") in in_flight and ("seed", "") in done_before
    elif point == "after-seed-succeeded":
        assert ("seed", "") in done_before and ("left", "") in in_flight
    elif point == "after-join-succeeded":
        assert ("join", "") in done_before and in_flight == {("final", "")}
    else:
        fan_done = [k for k in done_before if k[0] == "fan" and k[1]]
        assert len(fan_done) >= 2 and any(k[0] == "fan" for k in in_flight)

    resumed = cli("resume", run_id)
    assert resumed.returncode == 0, resumed.stderr

    after = store.snapshot(run_id)
    _assert_every_step_succeeded_once(after)
    for step in after.steps:
        key = _key(step)
        states = [a.state for a in step.attempts]
        if key in in_flight:
            # the attempt the crash interrupted is kept, marked abandoned; a new one succeeded
            assert states == ["abandoned", "succeeded"], key
        else:
            assert states == ["succeeded"], (key, states)
        if key in done_before:
            # completed before the crash: never executed again, its stored output reused
            old = done_before[key]
            assert step.attempts[0].finished_at == old.attempts[0].finished_at, key
            assert step.output == old.output, key

    # no step that had completed was started again by the resuming process
    resumed_events = [json.loads(line) for line in resumed.stdout.splitlines()]
    restarted = {(e["step"], e["item"] or "") for e in resumed_events if e["type"] == "step_started"}
    assert not restarted & set(done_before)
    assert restarted >= in_flight

    assert after.result() == EXPECTED_RESULT
    assert after.result() == _reference_result(reference, store)


def test_ctrl_c_leaves_the_run_resumable_and_says_how(spawn, cli, store):
    proc = spawn(*ARGS)
    reader = EventReader(proc)
    run_id = reader.run_id
    reader.until(is_event("step_started", "left"), timeout=60)

    proc.send_signal(signal.SIGINT)  # one Ctrl-C: running steps finish, nothing new starts
    assert proc.wait(timeout=60) == 130
    stderr = " ".join(proc.stderr.read().split())  # layout: see test_cli's single-line test
    assert f"the run is resumable: statepipe resume {run_id}" in stderr
    assert reader.rest(timeout=10)[-1]["type"] == "run_interrupted"

    interrupted = store.snapshot(run_id)
    assert interrupted.run.owner is None  # the lease was released: resume needs no waiting
    assert not any(s.state == "running" and not s.fanout for s in interrupted.steps)
    assert {"join", "final"} <= {s.name for s in interrupted.steps if s.state == "pending"}
    done_before = {_key(s) for s in interrupted.steps if s.state == "succeeded"}
    assert ("left", "") in done_before  # the step running at Ctrl-C was allowed to finish

    resumed = cli("resume", run_id)
    assert resumed.returncode == 0, resumed.stderr
    after = store.snapshot(run_id)
    _assert_every_step_succeeded_once(after)
    # a graceful stop abandons nothing: every step ran exactly once
    assert all(len(s.attempts) == 1 for s in after.steps)
    assert after.result() == EXPECTED_RESULT


def test_event_file_after_crash_and_resume_holds_every_event_exactly_once(spawn, cli, store, output_dir):
    run_id, _ = _kill_at(spawn, _nth(2, is_event("step_succeeded", "fan", child=True)))
    resumed = cli("resume", run_id)
    assert resumed.returncode == 0, resumed.stderr

    lines = (output_dir / f"{run_id}.jsonl").read_text().splitlines()
    events = [json.loads(line) for line in lines]
    last_seq = store.get_run(run_id).last_seq
    assert [e["seq"] for e in events] == list(range(1, last_seq + 1))
    stored = store.events_after(run_id, 0, limit=100_000)
    assert [(e["seq"], e["type"], e["step"], e["item"], e["attempt"], e["data"]) for e in events] == [
        (e.seq, e.type, e.step, e.item, e.attempt, e.data) for e in stored
    ]
    types = [e["type"] for e in events]
    assert types.count("run_created") == 1 and types.count("run_resumed") == 1
    assert types[-1] == "run_succeeded"
    assert "attempt_abandoned" in types
