"""Child workflows (issue 20): a step runs another workflow as a child run with ctx.run_workflow
and gets its result. The child is its own run, linked both ways; started once per step, item and
key, whatever crashes and resumes in between; cancelling the parent cancels its live children."""

from __future__ import annotations

import json
import signal
from typing import Any

from conftest import TEST_WORKFLOWS, workflow_path
from test_faults import wait_for

PARENT = workflow_path("parent")
ENV = {"STATEPIPE_WORKFLOWS_PATH": str(TEST_WORKFLOWS)}  # children are found by name


def _doc(cli: Any, run_id: str) -> dict[str, Any]:
    return cli.json("inspect", run_id, "--json")


def test_a_step_runs_child_workflows_and_gets_their_results_linked_both_ways(cli):
    done = cli("run", PARENT, **ENV)
    assert done.returncode == 0, done.stderr
    run_id = json.loads(done.stdout.splitlines()[0])["run_id"]
    doc = _doc(cli, run_id)
    assert doc["run"]["result"] == 20 + 2 + 4 + 6
    children = doc["child_runs"]
    assert sorted(c["key"] for c in children) == ["each[0]/item-1", "each[1]/item-2", "each[2]/item-3", "one/child"]
    assert {c["state"] for c in children} == {"succeeded"}
    child = _doc(cli, children[0]["id"])["run"]
    assert child["parent_run"] == run_id and child["workflow"] == "child"
    assert {r["id"] for r in cli.json("list", "--json", "--workflow", "child")} == {c["id"] for c in children}


def test_a_failed_child_fails_its_parents_step_naming_the_child(cli):
    done = cli("run", PARENT, "-i", "fail=10", **ENV)
    assert done.returncode == 1
    run_id = json.loads(done.stdout.splitlines()[0])["run_id"]
    doc = _doc(cli, run_id)
    one = next(s for s in doc["steps"] if s["name"] == "one")
    child = doc["child_runs"][0]
    assert one["error"] == f"ChildRunFailed: child run {child['id']} (child) failed: step double failed: ValueError: child 10 was asked to fail"


def test_a_parent_killed_while_its_child_runs_resumes_with_the_same_child(cli, spawn):
    proc = spawn("run", PARENT, "-i", "pause=1.5", **ENV)
    run_id = json.loads(proc.stdout.readline())["run_id"]  # type: ignore[union-attr]
    wait_for(lambda: _doc(cli, run_id)["child_runs"], 60, "a child run to exist", 0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = cli("resume", run_id, **ENV)
    assert done.returncode == 0, done.stderr
    doc = _doc(cli, run_id)
    assert doc["run"]["result"] == 32
    assert len(doc["child_runs"]) == 4  # one per key: the one running at the kill was taken up again
    assert {c["state"] for c in doc["child_runs"]} == {"succeeded"}


def test_a_detached_parent_and_its_children_run_on_workers(cli):
    run_id = cli("run", PARENT, "--detach", **ENV).stdout.strip().split()[-1]
    worker = cli("worker", "--until-idle", "--concurrency", "4", timeout=120, **ENV)
    assert worker.returncode == 0, worker.stderr
    doc = _doc(cli, run_id)
    assert doc["run"]["state"] == "succeeded" and doc["run"]["result"] == 32, worker.stderr
    assert len(doc["child_runs"]) == 4


def test_cancelling_a_parent_cancels_its_live_children(cli, spawn):
    proc = spawn("run", PARENT, "-i", "pause=30", **ENV)
    run_id = json.loads(proc.stdout.readline())["run_id"]  # type: ignore[union-attr]
    wait_for(lambda: _doc(cli, run_id)["child_runs"], 60, "a child run to exist", 0.2)
    done = cli("cancel", run_id, **ENV)
    assert done.returncode == 0, done.stderr
    proc.wait(timeout=60)
    doc = _doc(cli, run_id)
    assert doc["run"]["state"] == "cancelled"
    assert {c["state"] for c in doc["child_runs"]} == {"cancelled"}


def test_workflows_starting_each_other_in_a_cycle_are_stopped_at_the_depth_limit(cli):
    done = cli("run", workflow_path("ouroboros"), timeout=180, **ENV)
    assert done.returncode == 1
    run_id = json.loads(done.stdout.splitlines()[0])["run_id"]
    doc = _doc(cli, run_id)
    assert doc["run"]["state"] == "failed"
    assert "nest 9 child workflows deep (at most 8)" in doc["run"]["error"]
