"""`statepipe rerun`: run chosen steps again with everything downstream of them, keep the rest.

Every assertion reads the store (snapshot: steps and attempts; events_after: the event log), not
the command's output. Runs to rerun are executed in this process (run_here) for speed; the rerun
itself is the real CLI in a subprocess.

tests/workflows/iter_diamond.py with its defaults (n=3, factor=2, label="r"), by hand:
root [0, 1, 2]; left 3*2 = 6; right "r3"; join "r3:6"; final "R3:6".
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from conftest import EventReader, all_events, is_event, run_here, step_of, workflow_path

DIAMOND = "iter_diamond"
FANOUT = "iter_fanout"
STEPS = ["root", "left", "right", "join", "final"]
FRESH_RESULT = {"v": "R3:6", "fb": None}  # what a fresh run of iter_diamond with defaults gives


def _ok(done: Any) -> None:
    assert done.returncode == 0, done.stderr


def _attempts(snap: Any) -> dict[tuple[str, str], list[Any]]:
    """Every step row's attempts (fan-out children included), as stored."""
    return {s.key: list(s.attempts) for s in snap.steps}


def _rerun_seq(events: list[Any], nth: int = -1) -> int:
    return [e.seq for e in events if e.type == "rerun"][nth]


def _started_after(events: list[Any], seq: int) -> set[tuple[str, str | None]]:
    """(step, item) of every step_started event after `seq`."""
    return {(e.step, e.item) for e in events if e.seq > seq and e.type == "step_started"}


def _first_of_rerun(events: list[Any]) -> int:
    """The seq just before the rerun's first event (its run_resumed)."""
    return [e.seq for e in events if e.type == "run_resumed"][-1] - 1


def _touched_after(events: list[Any], seq: int) -> set[str]:
    return {e.step for e in events if e.seq > seq and e.step is not None}


def _states(row: Any) -> list[tuple[int, str]]:
    return [(a.number, a.state) for a in row.attempts]


# -- rerun --from on a succeeded run -------------------------------------------------------------


def test_rerun_from_keeps_upstream_attempts_and_executes_nothing_upstream(cli, store):
    run_id = run_here(store, DIAMOND)
    before = store.snapshot(run_id)

    _ok(cli("rerun", run_id, "--from", "left"))

    after = store.snapshot(run_id)
    events = all_events(store, run_id)
    mark = _rerun_seq(events)
    assert step_of(after, "root").attempts == step_of(before, "root").attempts
    assert step_of(after, "root").attempt == 1
    assert "root" not in _touched_after(events, _first_of_rerun(events))  # no event of any kind names it
    assert ("root", None) not in _started_after(events, mark)


def test_rerun_from_gives_the_step_and_its_descendants_a_new_succeeded_attempt(cli, store):
    run_id = run_here(store, DIAMOND)
    before = store.snapshot(run_id)

    _ok(cli("rerun", run_id, "--from", "left"))

    after = store.snapshot(run_id)
    for name in ("left", "join", "final"):
        row = step_of(after, name)
        assert row.state == "succeeded" and row.attempt == 2
        assert _states(row) == [(1, "succeeded"), (2, "succeeded")]
        assert row.attempts[0] == step_of(before, name).attempts[0]  # the old attempt is kept as it was
    events = all_events(store, run_id)
    assert _started_after(events, _rerun_seq(events)) == {("left", None), ("join", None), ("final", None)}
    assert store.get_run(run_id).state == "succeeded"


def test_rerun_invalidation_events_name_the_reason(cli, store):
    run_id = run_here(store, DIAMOND)

    _ok(cli("rerun", run_id, "--from", "left", "--reason", "the product looks off"))

    events = all_events(store, run_id)
    invalidated = [e for e in events if e.type == "step_invalidated"]
    assert [e.step for e in invalidated] == ["left", "join", "final"]
    assert all(e.data["reason"] == "the product looks off" and e.attempt == 1 for e in invalidated)
    (rerun,) = [e for e in events if e.type == "rerun"]
    assert rerun.data["reason"] == "the product looks off"
    assert rerun.data["steps"] == ["left"]
    assert rerun.data["affected"] == ["left", "join", "final"]
    assert rerun.data["kept"] == ["root", "right"]
    assert max(e.seq for e in invalidated) < rerun.seq < min(e.seq for e in events if e.type == "step_started" and e.seq > rerun.seq)


def test_rerun_leaves_siblings_that_are_not_downstream_untouched(cli, store):
    run_id = run_here(store, DIAMOND)
    before = store.snapshot(run_id)

    _ok(cli("rerun", run_id, "--from", "left"))

    after = store.snapshot(run_id)
    events = all_events(store, run_id)
    right_before, right_after = step_of(before, "right"), step_of(after, "right")
    assert right_after.attempts == right_before.attempts
    assert (right_after.state, right_after.attempt, right_after.started_at, right_after.finished_at) == (
        right_before.state, right_before.attempt, right_before.started_at, right_before.finished_at)
    assert "right" not in _touched_after(events, _first_of_rerun(events))


def test_rerun_result_equals_a_fresh_run(cli, store):
    run_id = run_here(store, DIAMOND)
    assert store.snapshot(run_id).result() == FRESH_RESULT

    _ok(cli("rerun", run_id, "--from", "right"))

    snap = store.snapshot(run_id)
    assert snap.run.state == "succeeded"
    assert snap.result() == FRESH_RESULT
    assert {s.name: s.output for s in snap.parents()} == {s.name: s.output for s in store.snapshot(run_here(store, DIAMOND)).parents()}


def test_rerun_from_several_steps_reruns_the_union_of_their_descendants(cli, store):
    run_id = run_here(store, FANOUT)
    before = store.snapshot(run_id)

    _ok(cli("rerun", run_id, "--from", "side", "--from", "join"))

    after = store.snapshot(run_id)
    events = all_events(store, run_id)
    assert _started_after(events, _rerun_seq(events)) == {("side", None), ("join", None)}
    assert [e.step for e in events if e.type == "step_invalidated"] == ["side", "join"]
    for key in [("items", ""), ("fan", ""), ("fan", "a"), ("fan", "b"), ("fan", "c")]:
        assert _attempts(after)[key] == _attempts(before)[key]
    assert _states(step_of(after, "side")) == [(1, "succeeded"), (2, "succeeded")]
    assert _states(step_of(after, "join")) == [(1, "succeeded"), (2, "succeeded")]


# -- rerun on runs that did not succeed ---------------------------------------------------------


def test_rerun_on_a_failed_run(cli, store):
    run_id = run_here(store, DIAMOND, env={"ITER_FAIL": "right"})
    before = store.snapshot(run_id)
    assert before.run.state == "failed"
    assert step_of(before, "right").state == "failed" and step_of(before, "left").state == "succeeded"

    _ok(cli("rerun", run_id, "--from", "left"))

    after = store.snapshot(run_id)
    events = all_events(store, run_id)
    assert after.run.state == "succeeded" and after.result() == FRESH_RESULT
    assert step_of(after, "root").attempts == step_of(before, "root").attempts
    assert _states(step_of(after, "left")) == [(1, "succeeded"), (2, "succeeded")]
    assert _states(step_of(after, "right")) == [(1, "failed"), (2, "succeeded")]  # the failed step runs again too
    assert _started_after(events, _first_of_rerun(events)) == {("left", None), ("right", None), ("join", None), ("final", None)}


def test_rerun_on_a_cancelled_run(cli, store):
    # join fails and pauses the run (on_exhausted="pause"); cancelling the paused run ends it cancelled
    run_id = run_here(store, DIAMOND, env={"ITER_FAIL": "join"})
    assert store.get_run(run_id).state == "paused"
    _ok(cli("cancel", run_id))
    before = store.snapshot(run_id)
    assert before.run.state == "cancelled"
    assert [step_of(before, n).state for n in STEPS] == ["succeeded", "succeeded", "succeeded", "cancelled", "cancelled"]

    _ok(cli("rerun", run_id, "--from", "right"))

    after = store.snapshot(run_id)
    events = all_events(store, run_id)
    assert after.run.state == "succeeded" and after.result() == FRESH_RESULT
    for name in ("root", "left"):
        assert step_of(after, name).attempts == step_of(before, name).attempts
    assert _started_after(events, _first_of_rerun(events)) == {("right", None), ("join", None), ("final", None)}
    assert _states(step_of(after, "right")) == [(1, "succeeded"), (2, "succeeded")]


def test_rerun_on_a_paused_run(cli, store):
    run_id = run_here(store, DIAMOND, env={"ITER_FAIL": "join"})
    before = store.snapshot(run_id)
    assert before.run.state == "paused"

    _ok(cli("rerun", run_id, "--from", "right"))

    after = store.snapshot(run_id)
    events = all_events(store, run_id)
    assert after.run.state == "succeeded" and after.result() == FRESH_RESULT
    assert [e.data["from_state"] for e in events if e.type == "run_resumed"] == ["paused"]
    for name in ("root", "left"):
        assert step_of(after, name).attempts == step_of(before, name).attempts
    assert _started_after(events, _first_of_rerun(events)) == {("right", None), ("join", None), ("final", None)}
    assert _states(step_of(after, "join")) == [(1, "failed"), (2, "succeeded")]


# -- fan-out items, new inputs ------------------------------------------------------------------


def test_rerun_item_reruns_only_that_child_and_the_join(cli, store):
    run_id = run_here(store, FANOUT)
    before = store.snapshot(run_id)

    _ok(cli("rerun", run_id, "--from", "fan", "--item", "b"))

    after = store.snapshot(run_id)
    events = all_events(store, run_id)
    assert _started_after(events, _rerun_seq(events)) == {("fan", "b"), ("join", None)}
    assert _states(step_of(after, "fan", "b")) == [(1, "succeeded"), (2, "succeeded")]
    for key in [("items", ""), ("side", ""), ("fan", "a"), ("fan", "c")]:
        assert _attempts(after)[key] == _attempts(before)[key]
    assert _states(step_of(after, "join")) == [(1, "succeeded"), (2, "succeeded")]
    assert [e.data["items"] for e in events if e.type == "rerun"] == [{"fan": ["b"]}]
    assert after.run.state == "succeeded" and after.result() == before.result() == {"total": 14, "count": 3}


def test_rerun_set_step_param_changes_that_steps_input(cli, store):
    run_id = run_here(store, DIAMOND)
    before = store.snapshot(run_id)

    _ok(cli("rerun", run_id, "--set", "left.factor=10"))

    after = store.snapshot(run_id)
    events = all_events(store, run_id)
    (rerun,) = [e for e in events if e.type == "rerun"]
    assert rerun.data["overrides"] == {"left": {"factor": 10}}
    assert step_of(after, "left").output == {"v": 30, "fb": None}  # sum(0, 1, 2) * 10
    assert step_of(after, "left").overrides == {"factor": 10}
    assert after.result() == {"v": "R3:30", "fb": None}
    assert after.run.input == before.run.input == {}  # the run's input is not what changed
    assert _started_after(events, rerun.seq) == {("left", None), ("join", None), ("final", None)}


def test_rerun_set_key_changes_the_run_input_and_reruns_steps_that_read_it(cli, store):
    run_id = run_here(store, DIAMOND)
    before = store.snapshot(run_id)

    _ok(cli("rerun", run_id, "--set", "label=x"))

    after = store.snapshot(run_id)
    events = all_events(store, run_id)
    (changed,) = [e for e in events if e.type == "input_changed"]
    assert changed.data["before"] == {} and changed.data["after"] == {"label": "x"}
    assert after.run.input == {"label": "x"}
    assert _started_after(events, _rerun_seq(events)) == {("right", None), ("join", None), ("final", None)}
    for name in ("root", "left"):  # they do not read `label`
        assert step_of(after, name).attempts == step_of(before, name).attempts
    assert after.result() == {"v": "X3:6", "fb": None}


@pytest.mark.parametrize(
    "args, message",
    [
        (("--from", "nope"), "no step 'nope'"),
        (("--from", "fan", "--item", "zzz"), "no item 'zzz'"),
        (("--set", "fan.nope=1"), "no parameter 'nope'"),
    ],
    ids=["unknown-step", "unknown-item", "unknown-param"],
)
def test_rerun_with_an_unknown_name_exits_2_and_leaves_the_run_untouched(cli, store, args, message):
    run_id = run_here(store, FANOUT)
    before = store.snapshot(run_id)
    events_before = all_events(store, run_id)

    done = cli("rerun", run_id, *args)

    assert done.returncode == 2, done.stderr
    assert message in done.stderr
    after = store.snapshot(run_id)
    assert _attempts(after) == _attempts(before)
    assert [(s.key, s.state, s.attempt) for s in after.steps] == [(s.key, s.state, s.attempt) for s in before.steps]
    assert all_events(store, run_id) == events_before
    assert after.run.state == "succeeded"


# -- a run executing in another process -------------------------------------------------------


def test_rerun_of_a_run_executing_elsewhere_pauses_it_first_then_completes(cli, spawn, store, tmp_path):
    gate = tmp_path / "gate"
    gate.touch()  # final waits while this file exists, in the first process only
    proc = spawn("run", workflow_path(DIAMOND), ITER_HOLD=f"final={gate}")
    reader = EventReader(proc)
    run_id = reader.run_id
    reader.until(is_event("step_started", "final"), timeout=60)
    before = store.snapshot(run_id)

    _ok(cli("rerun", run_id, "--from", "left"))

    assert proc.wait(timeout=30) == 0  # the first process stopped with the run paused
    after = store.snapshot(run_id)
    events = all_events(store, run_id)
    paused = [e for e in events if e.type == "run_paused"]
    assert len(paused) == 1 and paused[0].data["request"] == "pause_now"
    assert paused[0].seq < _rerun_seq(events)
    assert _states(step_of(after, "final")) == [(1, "abandoned"), (2, "succeeded")]
    for name in ("root", "right"):
        assert step_of(after, name).attempts == step_of(before, name).attempts
    assert _states(step_of(after, "left")) == [(1, "succeeded"), (2, "succeeded")]
    assert after.run.state == "succeeded" and after.result() == FRESH_RESULT
    assert after.run.owner is None


# -- code changes -------------------------------------------------------------------------------


def _copy_diamond(tmp_path: Path) -> Path:
    path = tmp_path / "iter_diamond.py"
    shutil.copy(workflow_path(DIAMOND), path)
    return path


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert text.count(old) == 1
    path.write_text(text.replace(old, new))


def test_resume_after_a_code_change_reruns_exactly_the_changed_step_and_its_descendants(cli, store, tmp_path):
    path = _copy_diamond(tmp_path)
    run_id = run_here(store, str(path), env={"ITER_FAIL": "final"})
    before = store.snapshot(run_id)
    assert before.run.state == "failed"
    _edit(path, 'total = sum(root["v"]) * factor', 'total = sum(root["v"]) * factor + 100')

    _ok(cli("resume", run_id))

    after = store.snapshot(run_id)
    events = all_events(store, run_id)
    (code,) = [e for e in events if e.type == "code_changed"]
    assert code.data["steps"] == ["left"]
    (rerun,) = [e for e in events if e.type == "rerun"]
    assert rerun.data["affected"] == ["left", "join", "final"]
    assert "code changed: left" in rerun.data["reason"]
    assert _started_after(events, code.seq) == {("left", None), ("join", None), ("final", None)}
    for name in ("root", "right"):
        assert step_of(after, name).attempts == step_of(before, name).attempts
    assert step_of(after, "left").output == {"v": 106, "fb": None}
    assert after.run.state == "succeeded" and after.result() == {"v": "R3:106", "fb": None}
    assert after.run.fingerprint["left"] != before.run.fingerprint["left"]
    assert {k: v for k, v in after.run.fingerprint.items() if k != "left"} == {
        k: v for k, v in before.run.fingerprint.items() if k != "left"}


def test_rerun_after_a_code_change_also_reruns_the_changed_step(cli, store, tmp_path):
    path = _copy_diamond(tmp_path)
    run_id = run_here(store, str(path))
    before = store.snapshot(run_id)
    _edit(path, "return {\"v\": f\"{label}{len(root['v'])}\"", "return {\"v\": f\"{label}-{len(root['v'])}\"")

    _ok(cli("rerun", run_id, "--from", "final"))

    after = store.snapshot(run_id)
    events = all_events(store, run_id)
    assert [e.data["steps"] for e in events if e.type == "code_changed"] == [["right"]]
    assert _started_after(events, _rerun_seq(events)) == {("right", None), ("join", None), ("final", None)}
    for name in ("root", "left"):
        assert step_of(after, name).attempts == step_of(before, name).attempts
    assert after.result() == {"v": "R-3:6", "fb": None}


def test_strict_resume_refuses_a_code_change_with_exit_4_and_changes_nothing(cli, store, tmp_path):
    path = _copy_diamond(tmp_path)
    run_id = run_here(store, str(path), env={"ITER_FAIL": "final"})
    before = store.snapshot(run_id)
    events_before = all_events(store, run_id)
    _edit(path, 'total = sum(root["v"]) * factor', 'total = sum(root["v"]) * factor + 100')

    done = cli("resume", run_id, "--strict")

    assert done.returncode == 4, done.stderr
    assert "left" in done.stderr and "--strict" in done.stderr
    after = store.snapshot(run_id)
    assert all_events(store, run_id) == events_before
    assert _attempts(after) == _attempts(before)
    assert [(s.key, s.state, s.attempt) for s in after.steps] == [(s.key, s.state, s.attempt) for s in before.steps]
    assert (after.run.state, after.run.fingerprint, after.run.input) == (before.run.state, before.run.fingerprint, before.run.input)


def test_rerun_of_a_fanout_source_reexpands_reusing_the_rows_of_surviving_items(cli, store):
    run_id = run_here(store, FANOUT)
    before = store.snapshot(run_id)

    _ok(cli("rerun", run_id, "--set", 'keys=["c", "a", "d"]'))

    after = store.snapshot(run_id)
    events = all_events(store, run_id)
    assert [c.item for c in after.children("fan")] == ["c", "a", "d"]
    # surviving items continue their own history; the new one starts at 1
    assert [(a.number, a.output) for a in step_of(after, "fan", "c").attempts] == [
        (1, {"key": "c", "sq": 9, "fb": None}), (2, {"key": "c", "sq": 1, "fb": None})]
    assert [(a.number, a.state) for a in step_of(after, "fan", "a").attempts] == [(1, "succeeded"), (2, "succeeded")]
    assert [(a.number, a.state) for a in step_of(after, "fan", "d").attempts] == [(1, "succeeded")]
    # the dropped item keeps its row and attempt, outside the fan-out's output
    dropped = step_of(after, "fan", "b")
    assert dropped.item_index is None and dropped.attempts == step_of(before, "fan", "b").attempts
    assert ("fan", "b") not in _started_after(events, _rerun_seq(events))
    assert after.output_of(step_of(after, "fan")) == [
        {"key": "c", "sq": 1, "fb": None}, {"key": "a", "sq": 4, "fb": None}, {"key": "d", "sq": 9, "fb": None}]
    assert after.result() == {"total": 14, "count": 3}
