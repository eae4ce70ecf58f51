"""Distributed fan-outs (issue 18): a map_over step with distribute=True has its children claimed
by any worker on the database, each child's attempts committed under its own claim; the run's
owner waits for them and joins. Real worker processes, real kill -9."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from statepipe.definition.workflow import Workflow
from statepipe.errors import DefinitionError
from tests.conftest import run_here, workflow_path
from tests.test_faults import assert_alive, kill9, wait_for

SPREAD = workflow_path("spread")
FAST_LEASE = {"STATEPIPE_LEASE_SECONDS": "2"}


def _enqueue(cli: Any, **inputs: Any) -> str:
    args = [f"-i{k}={v}" for k, v in inputs.items()]
    done = cli("run", SPREAD, "--detach", *args)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1]


def _succeeded_attempts(store: Any, run_id: str) -> dict[str, list[Any]]:
    snap = store.snapshot(run_id)
    return {s.item: [a for a in s.attempts if a.state == "succeeded"] for s in snap.steps if s.name == "square" and s.item}


def _under_way(store: Any, run_id: str, done: int) -> None:
    """Wait until `done` children of the run have succeeded."""
    wait_for(lambda: sum(len(v) for v in _succeeded_attempts(store, run_id).values()) >= done, 60, f"{done} children done")


def _reaches(store: Any, run_id: str, *states: str, timeout: float = 60) -> None:
    """Wait until the run is in one of `states`."""
    wait_for(lambda: store.get_run(run_id).state in states, timeout, f"the run to be {' or '.join(states)}", 0.2)


def _stop(*workers: subprocess.Popen[str]) -> None:
    for w in workers:
        if w.poll() is None:
            w.terminate()
    for w in workers:
        w.wait(timeout=30)


def test_three_workers_share_a_fan_out_and_one_killed_mid_way_loses_only_its_attempts(spawn, cli, store):
    workers = [spawn("worker", **FAST_LEASE) for _ in range(3)]
    run_id = _enqueue(cli, width=300, seconds=0.02)
    # wait until the fan-out is well under way, then kill a worker that holds children
    _under_way(store, run_id, 60)
    ran = [a.worker.split(":")[1] for v in _succeeded_attempts(store, run_id).values() for a in v]
    victim = max(workers, key=lambda w: ran.count(str(w.pid)))  # one that is taking children
    assert_alive(*workers)
    kill9(victim)
    _reaches(store, run_id, "succeeded", "failed", timeout=120)
    _stop(*[w for w in workers if w is not victim])

    assert store.get_run(run_id).state == "succeeded"
    done = _succeeded_attempts(store, run_id)
    assert sorted(done, key=int) == [str(i) for i in range(300)]
    assert all(len(v) == 1 for v in done.values()), {k: len(v) for k, v in done.items() if len(v) != 1}
    workers_seen = {a.worker.split(":")[1] for v in done.values() for a in v}
    assert len(workers_seen) > 1, workers_seen
    assert store.results([run_id])[run_id] == _single_process_result(store, width=300)


def _single_process_result(store: Any, **inputs: Any) -> Any:
    run_id = run_here(store, "spread", **inputs)
    return store.results([run_id])[run_id]


def test_a_worker_killed_mid_child_leaves_the_attempt_abandoned_and_another_worker_finishes_it(spawn, cli, store):
    first = spawn("worker", **FAST_LEASE)
    run_id = _enqueue(cli, width=4, seconds=30)
    wait_for(lambda: any(s.state == "running" for s in store.fanout_children(run_id, "square")), 60, "children running")
    kill9(first)
    before = {s.item: s.attempt for s in store.fanout_children(run_id, "square")}
    second = spawn("worker", **FAST_LEASE)
    try:
        # the second worker takes the children once the dead one's leases run out (2 s), and
        # records the killed attempts abandoned, naming the dead process
        wait_for(lambda: all(s.attempt == before[s.item] + 1 for s in store.fanout_children(run_id, "square")), 60,
                 "the children to be claimed again")
        snap = store.snapshot(run_id)
        abandoned = [a for s in snap.steps if s.name == "square" and s.item for a in s.attempts if a.state == "abandoned"]
        assert len(abandoned) == 4
        assert all(a.error.startswith(f"the process running it died (pid {first.pid} on ") for a in abandoned)
        assert {a.worker.split(":")[1] for a in abandoned} == {str(first.pid)}  # the attempts the dead worker ran
    finally:
        assert cli("cancel", run_id).returncode == 0
        _reaches(store, run_id, "cancelled")
        _stop(second)


def test_a_run_started_here_runs_its_distributed_children_itself_when_no_worker_is_there(store):
    run_id = run_here(store, "spread", width=50)
    assert store.get_run(run_id).state == "succeeded"
    result = store.results([run_id])[run_id]
    assert result["count"] == 50 and result["order"] == list(range(50))
    assert all(len(v) == 1 for v in _succeeded_attempts(store, run_id).values())


def test_a_distributed_childs_failure_is_retried_per_its_policy_on_whichever_worker(store):
    run_id = run_here(store, "spread", width=10, flaky=3)
    assert store.get_run(run_id).state == "succeeded"
    child = next(s for s in store.snapshot(run_id).steps if s.name == "square" and s.item == "3")
    assert [a.state for a in child.attempts] == ["failed", "succeeded"]
    assert "fails its first attempt" in child.attempts[0].error


def test_a_distributed_child_that_keeps_failing_fails_the_fan_out_and_the_run_with_its_error(store):
    run_id = run_here(store, "spread", width=10, broken=4)
    run = store.get_run(run_id)
    assert run.state == "failed"
    assert run.error == "step square failed: item 4 failed: ValueError: item 4 is broken"
    child = next(s for s in store.snapshot(run_id).steps if s.name == "square" and s.item == "4")
    assert [a.state for a in child.attempts] == ["failed"] * 3
    assert "line" in (child.attempts[-1].traceback or "")


def test_the_fan_outs_concurrency_holds_across_all_workers(spawn, cli, store, tmp_path):
    marks = tmp_path / "marks"
    marks.mkdir()
    workers = [spawn("worker") for _ in range(3)]
    run_id = _enqueue(cli, width=40, seconds=0.05, marks=str(marks))
    try:
        most = _most_at_once(store, run_id, marks)
    finally:
        _stop(*workers)
    assert 2 <= most <= 8  # spread.py's concurrency=8, and they did run side by side
    done = _succeeded_attempts(store, run_id)
    assert len({a.worker for v in done.values() for a in v}) > 1


def _most_at_once(store: Any, run_id: str, marks: Path) -> int:
    seen: list[int] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            seen.append(len(os.listdir(marks)))
            time.sleep(0.002)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        _reaches(store, run_id, "succeeded", timeout=120)
    finally:
        stop.set()
        watcher.join()
    return max(seen)


def test_a_worker_runs_no_more_children_at_once_than_its_children_option(spawn, cli, store, tmp_path):
    marks = tmp_path / "marks"
    marks.mkdir()
    worker = spawn("worker", "--children", "2")
    run_id = _enqueue(cli, width=12, seconds=0.1, marks=str(marks))
    most = _most_at_once(store, run_id, marks)
    _stop(worker)
    assert most == 2


def test_cancel_stops_a_distributed_fan_out_and_no_child_starts_after_it(spawn, cli, store):
    worker = spawn("worker")
    run_id = _enqueue(cli, width=200, seconds=0.2)
    _under_way(store, run_id, 5)
    assert cli("cancel", run_id).returncode == 0
    _reaches(store, run_id, "cancelled")
    states = [s.state for s in store.fanout_children(run_id, "square")]
    time.sleep(1.0)
    assert [s.state for s in store.fanout_children(run_id, "square")] == states  # nothing moves any more
    assert "running" not in states and "pending" not in states
    assert "cancelled" in states  # those not started when the cancel came
    _stop(worker)


def test_pause_waits_for_the_running_children_and_resume_finishes_the_fan_out(spawn, cli, store):
    worker = spawn("worker")
    run_id = _enqueue(cli, width=60, seconds=0.1)
    _under_way(store, run_id, 5)
    assert cli("pause", run_id).returncode == 0
    _reaches(store, run_id, "paused")
    assert "running" not in {s.state for s in store.fanout_children(run_id, "square")}
    assert cli("resume", run_id, "--detach").returncode == 0
    _reaches(store, run_id, "succeeded")
    _stop(worker)
    assert all(len(v) == 1 for v in _succeeded_attempts(store, run_id).values())
    assert store.results([run_id])[run_id]["count"] == 60


def test_distribute_is_refused_on_a_step_that_is_not_a_fan_out():
    wf = Workflow("bad_distribute")
    with pytest.raises(DefinitionError, match="distribute applies to map_over steps only"):
        @wf.step(distribute=True)
        def lonely() -> int:
            return 1



@pytest.mark.parametrize("workflow", ["spread", "spread_local"])
def test_rerun_from_a_fan_out_of_a_failed_run_expands_it_again_and_succeeds(cli, store, workflow, tmp_path):
    # before: the fan-out, reopened by the failed run's resume, was left running without children
    # (in-process: "nothing running and nothing ready"; distributed: joined with no items)
    path = SPREAD
    if workflow == "spread_local":
        path = str(tmp_path / "spread_local.py")
        Path(path).write_text(Path(SPREAD).read_text().replace("distribute=True, ", "").replace('"spread"', '"spread_local"'))
    failed = cli("run", path, "-i", "width=20", "-i", "broken=4")
    assert failed.returncode == 1
    run_id = store.list_runs(limit=1)[0].id
    done = cli("rerun", run_id, "--from", "square", "--set", "broken=-1")
    assert done.returncode == 0, done.stderr
    result = store.results([run_id])[run_id]
    assert result["count"] == 20 and result["order"] == list(range(20))


def test_the_runs_own_process_killed_mid_fan_out_is_taken_over_and_every_child_succeeds_once(spawn, store):
    workers = [spawn("worker", **FAST_LEASE) for _ in range(2)]
    owner = spawn("run", SPREAD, "-i", "width=200", "-i", "seconds=0.02", **FAST_LEASE)
    wait_for(lambda: store.list_runs(limit=1), 30, "the run to be created")
    run_id = store.list_runs(limit=1)[0].id
    _under_way(store, run_id, 40)
    kill9(owner)  # the run's owner, and the children it ran itself
    _reaches(store, run_id, "succeeded", timeout=120)
    _stop(*workers)
    done = _succeeded_attempts(store, run_id)
    assert sorted(done, key=int) == [str(i) for i in range(200)]
    assert all(len(v) == 1 for v in done.values())
    assert store.results([run_id])[run_id]["order"] == list(range(200))


def test_a_worker_that_cannot_load_the_workflow_passes_its_children_over_and_says_so_once(spawn, store):
    broken = spawn("worker", SPREAD_BROKEN_HERE="1")
    owner = spawn("run", SPREAD, "-i", "width=40", "-i", "seconds=0.05")
    wait_for(lambda: store.list_runs(limit=1) and store.list_runs(limit=1)[0].state == "succeeded", 60, "the run to succeed", 0.2)
    assert owner.wait(timeout=30) == 0
    broken.terminate()
    assert broken.wait(timeout=30) == 0
    said = broken.stderr.read() if broken.stderr else ""
    run_id = store.list_runs(limit=1)[0].id
    assert said.count(f"run {run_id}: ") == 1, said
    assert "a module this worker lacks" in said
    done = _succeeded_attempts(store, run_id)
    assert len(done) == 40 and all(len(v) == 1 for v in done.values())
    assert {a.worker.split(":")[1] for v in done.values() for a in v} == {str(owner.pid)}


def test_a_run_asked_to_stop_lets_the_children_it_runs_itself_finish_and_resumes_later(spawn, cli, store):
    owner = spawn("run", SPREAD, "-i", "width=40", "-i", "seconds=1")
    wait_for(lambda: store.list_runs(limit=1), 30, "the run to be created")
    run_id = store.list_runs(limit=1)[0].id
    wait_for(lambda: any(s.state == "running" for s in store.fanout_children(run_id, "square")), 30, "children running")
    running = {s.item for s in store.fanout_children(run_id, "square") if s.state == "running"}
    owner.send_signal(signal.SIGTERM)
    assert owner.wait(timeout=60) == 130
    after = {s.item: s for s in store.fanout_children(run_id, "square")}
    assert all(after[i].state == "succeeded" for i in running)  # drained, not cut off
    assert not [s for s in after.values() if s.state == "running"]
    assert cli("resume", run_id).returncode == 0
    done = _succeeded_attempts(store, run_id)
    assert len(done) == 40 and all(len(v) == 1 for v in done.values())


def _hook_calls(cli: Any, tmp_path: Path, fail: str) -> tuple[int, list[dict[str, Any]]]:
    log = tmp_path / "hooks.jsonl"
    done = cli("run", workflow_path("spread_hooks"), "-i", f"fail={fail}", "-i", f"hook_log={log}")
    return done.returncode, [json.loads(line) for line in log.read_text().splitlines()]


def test_a_distributed_childs_progress_and_retry_call_the_workflows_hooks(cli, tmp_path):
    code, calls = _hook_calls(cli, tmp_path, "flaky")
    assert code == 0
    progress = sorted((c["meta"]["item"], c["meta"]["message"]) for c in calls if c["hook"] == "on_progress")
    assert progress == [("0", "checking 0"), ("1", "checking 1"), ("1", "checking 1"), ("2", "checking 2")]
    (retry,) = [c["meta"] for c in calls if c["hook"] == "on_retry"]
    assert retry == {"step": "check", "item": "1", "attempt": 1, "error": "ConnectionError: item 1: transient", "delay_s": 0.05}
    assert not [c for c in calls if c["hook"] == "on_error"]


def test_a_distributed_child_that_fails_calls_on_error_as_its_fan_out_does(cli, tmp_path):
    code, calls = _hook_calls(cli, tmp_path, "broken")
    assert code == 1
    errors = {(c["meta"]["step"], c["meta"]["item"]): c["meta"] for c in calls if c["hook"] == "on_error"}
    assert errors[("check", "2")] == {"step": "check", "item": "2", "attempt": 2, "error": "ValueError: item 2 is broken"}
    assert errors[("check", None)]["error"] == "item 2 failed: ValueError: item 2 is broken"
    assert [c["meta"]["attempt"] for c in calls if c["hook"] == "on_retry" and c["meta"]["item"] == "2"] == [1]
