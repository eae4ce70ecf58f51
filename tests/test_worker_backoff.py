"""No hot loops in workers (issue 22): a run a worker lets go because of an error is not claimed
again at once. It is passed over with a backoff that doubles with each failure in a row, said
once on the worker's stderr (run id and reason), and tried again later, when it may succeed
(a fix deployed). Before, a failure that escaped the executor had the worker re-claim the run
with no pause (964 claims in 5 s), and one the loader reported was passed over until the worker
restarted."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from test_faults import assert_alive, wait_for

WORKS = '''
from statepipe import Workflow

wf = Workflow("deployed")


@wf.step
def only():
    return "done"
'''

# a deploy half done: the file's own import fails on the worker
BROKEN = 'raise RuntimeError("settings.yaml not found")\n' + WORKS

# a failure that escapes the executor: the condition of the first step raises
CONDITION_RAISES = '''
from statepipe import Workflow

wf = Workflow("condition_raises")


@wf.step(when=lambda: 1 / 0)
def first():
    return 1
'''

# argparse at import, say, meeting the worker's own command line
EXITS = "import sys\n\nsys.exit(3)\n" + WORKS


def _enqueue(cli: Any, path: Path) -> str:
    done = cli("run", "--detach", str(path))
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def _work_for(worker: subprocess.Popen[str], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert_alive(worker)
        time.sleep(0.2)


def _stop(worker: subprocess.Popen[str]) -> str:
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=30) == 0
    return worker.stderr.read() if worker.stderr else ""


def _said(stderr: str, run_id: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith(f"run {run_id}: ")]


def test_a_run_whose_workflow_fails_to_load_is_passed_over_with_backoff_said_once_and_taken_again_once_fixed(spawn, cli, store, tmp_path):
    path = tmp_path / "deployed.py"
    path.write_text(WORKS)
    run_id = _enqueue(cli, path)
    fence = store.get_run(run_id).fencing_token
    path.write_text(BROKEN)
    worker = spawn("worker")
    _work_for(worker, 5)
    claims = store.get_run(run_id).fencing_token - fence
    print(f"\nclaimed {claims} times in 5 s while its file failed to import")
    assert 1 <= claims <= 5
    path.write_text(WORKS)
    wait_for(lambda: assert_alive(worker) or store.get_run(run_id).state == "succeeded", 30, "the fixed run to succeed", 0.2)
    said = _said(_stop(worker), run_id)
    assert len(said) == 1, said
    assert "RuntimeError: settings.yaml not found" in said[0]


def test_a_run_whose_execution_raises_past_the_executor_is_not_claimed_again_at_once_and_is_reported_once(spawn, cli, store, tmp_path):
    path = tmp_path / "condition_raises.py"
    path.write_text(CONDITION_RAISES)
    run_id = _enqueue(cli, path)
    fence = store.get_run(run_id).fencing_token
    worker = spawn("worker")
    _work_for(worker, 5)
    run = store.get_run(run_id)
    claims = run.fencing_token - fence
    print(f"\nclaimed {claims} times in 5 s")
    assert 1 <= claims <= 5
    said = _said(_stop(worker), run_id)
    if run.state == "failed":  # should the executor come to fail such a step, the run says why
        assert "ZeroDivisionError" in (run.error or "")
    else:
        assert len(said) == 1, said
        assert "ZeroDivisionError: division by zero" in said[0]


def test_a_workflow_that_exits_at_import_does_not_stop_the_worker(spawn, cli, store, tmp_path):
    path = tmp_path / "deployed.py"
    path.write_text(WORKS)
    exits = _enqueue(cli, path)
    fence = store.get_run(exits).fencing_token
    path.write_text(EXITS)
    worker = spawn("worker")
    _work_for(worker, 5)
    assert store.get_run(exits).fencing_token - fence <= 5
    other = tmp_path / "other.py"
    other.write_text(WORKS.replace('"deployed"', '"other"'))
    later = _enqueue(cli, other)
    wait_for(lambda: assert_alive(worker) or store.get_run(later).state == "succeeded", 30, "the worker to run the next run", 0.2)
    said = _said(_stop(worker), exits)
    assert said and "SystemExit: 3" in said[0], said
