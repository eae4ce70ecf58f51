"""The terminal tells the truth (issue 23): a run nobody executes shows as `interrupted` with the
way on, a failed step keeps its traceback, the time shown is the time spent executing, and
however the process ends (signals, a closed pipe) the terminal is left usable with the resume
hint last. Through the real CLI, real processes and a pseudo-terminal where the terminal matters."""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from conftest import REPO, cli_env, workflow_path
from test_faults import wait_for

QUIET = workflow_path("quiet")
FAILING = workflow_path("failing")


def _started(proc: subprocess.Popen[str]) -> str:
    """The run id from the first JSON line of a piped `run`."""
    assert proc.stdout is not None
    return str(json.loads(proc.stdout.readline())["run_id"])


def _running(cli: Any, run_id: str, step: str) -> bool:
    doc = cli.json("inspect", run_id, "--json")
    return any(s["name"] == step and s["state"] == "running" for s in doc["steps"])


# -- 1. a dead run says interrupted ------------------------------------------------------------


def test_a_killed_run_shows_as_interrupted_with_the_command_that_resumes_it(cli, spawn):
    proc = spawn("run", QUIET, "-i", "seconds=30")
    run_id = _started(proc)
    wait_for(lambda: _running(cli, run_id, "silent"), 60, "the step to run", 0.2)
    proc.kill()
    proc.wait()
    doc = cli.json("inspect", run_id, "--json")["run"]
    assert doc["state"] == "interrupted"
    assert doc["interrupted_at"] is not None
    assert [r["id"] for r in cli.json("list", "--json", "--status", "interrupted")] == [run_id]
    assert cli.json("list", "--json", "--status", "running") == []
    shown = cli("inspect", run_id, COLUMNS="100")
    assert "interrupted" in shown.stdout
    assert f"statepipe resume {run_id[:8]}" in shown.stdout


def test_a_run_stopped_with_ctrl_c_shows_as_interrupted_and_resumes_to_success(cli, spawn):
    proc = spawn("run", QUIET, "-i", "seconds=1", "--grace", "0")
    run_id = _started(proc)
    wait_for(lambda: _running(cli, run_id, "silent"), 60, "the step to run", 0.2)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=30) == 130
    assert cli.json("inspect", run_id, "--json")["run"]["state"] == "interrupted"
    done = cli("resume", run_id)
    assert done.returncode == 0, done.stderr
    assert cli.json("inspect", run_id, "--json")["run"]["state"] == "succeeded"


def test_logs_follow_on_an_interrupted_run_prints_what_there_is_says_so_and_exits_130(cli, spawn):
    proc = spawn("run", QUIET, "-i", "seconds=30")
    run_id = _started(proc)
    wait_for(lambda: _running(cli, run_id, "silent"), 60, "the step to run", 0.2)
    proc.kill()
    proc.wait()
    done = cli("logs", run_id, "--follow", timeout=30)
    assert done.returncode == 130
    assert [json.loads(line)["type"] for line in done.stdout.splitlines()][-1] == "step_started"
    assert f"run {run_id} is interrupted" in done.stderr
    assert f"statepipe resume {run_id[:8]}" in done.stderr


def test_logs_follow_wait_keeps_following_an_interrupted_run_until_it_ends(cli, spawn):
    proc = spawn("run", QUIET, "-i", "seconds=30")
    run_id = _started(proc)
    wait_for(lambda: _running(cli, run_id, "silent"), 60, "the step to run", 0.2)
    proc.kill()
    proc.wait()
    follower = spawn("logs", run_id, "--follow", "--wait")
    time.sleep(1.0)
    assert follower.poll() is None  # still following
    resumed = cli("rerun", run_id, "--set", "seconds=0")
    assert resumed.returncode == 0, resumed.stderr
    assert follower.wait(timeout=30) == 0
    assert follower.stdout is not None
    assert json.loads(follower.stdout.read().splitlines()[-1])["type"] == "run_succeeded"


# -- 2. a failing step's traceback -------------------------------------------------------------


def test_a_failed_attempt_stores_the_users_traceback_with_file_and_line(cli):
    done = cli("run", FAILING)
    assert done.returncode == 1
    run_id = json.loads(done.stdout.splitlines()[0])["run_id"]
    doc = cli.json("inspect", run_id, "--json")
    failed = [s for s in doc["steps"] if s["state"] == "failed"]
    assert failed, doc
    trace = failed[0]["attempts"][-1]["traceback"]
    assert trace.startswith("Traceback (most recent call last):")
    assert "tests/workflows/failing.py" in trace
    assert "statepipe/engine" not in trace  # statepipe's own frames are trimmed
    event = next(json.loads(line) for line in done.stdout.splitlines() if '"step_failed"' in line)
    assert event["data"]["at"].startswith("tests/workflows/failing.py:")


def test_run_verbose_prints_the_failed_steps_traceback(cli):
    done = cli("-v", "run", FAILING)
    assert done.returncode == 1
    assert "Traceback (most recent call last):" in done.stderr
    assert "tests/workflows/failing.py" in done.stderr


def test_resume_says_which_steps_run_again_because_their_code_changed(cli, tmp_path: Path):
    source = tmp_path / "editable.py"
    source.write_text(Path(QUIET).read_text())
    done = cli("run", str(source), "-i", "seconds=0")
    assert done.returncode == 0, done.stderr
    run_id = json.loads(done.stdout.splitlines()[0])["run_id"]
    source.write_text(source.read_text().replace("return silent + 1", "return silent + 2"))
    again = cli("rerun", run_id, "--from", "first")
    assert again.returncode == 0, again.stderr
    assert "code changed since the run recorded it: last re-run with what depends on them" in again.stderr


# -- 7. durations ------------------------------------------------------------------------------


def test_the_duration_shown_is_time_spent_executing_not_idle_time_since_created(cli):
    done = cli("run", QUIET, "-i", "seconds=0")
    run_id = json.loads(done.stdout.splitlines()[0])["run_id"]
    time.sleep(3.0)  # idle: nobody executes the run
    again = cli("rerun", run_id, "--from", "last")
    assert again.returncode == 0, again.stderr
    run = cli.json("inspect", run_id, "--json")["run"]
    created = run["created_at"]
    finished = run["finished_at"]
    from datetime import datetime

    span = (datetime.fromisoformat(finished) - datetime.fromisoformat(created)).total_seconds()
    assert span >= 3.0
    assert run["duration_s"] < span - 2.0  # the three idle seconds are not counted


# -- 3, 9. signals and pipes -------------------------------------------------------------------


def test_a_closed_stdout_stops_the_run_promptly_and_leaves_it_resumable(cli):
    shell = f"{sys.executable} -m statepipe run {QUIET} -i seconds=10 | head -3"
    began = time.monotonic()
    piped = subprocess.run(["bash", "-c", shell], cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=60)
    took = time.monotonic() - began
    lines = piped.stdout.splitlines()
    assert len(lines) == 3
    run_id = json.loads(lines[0])["run_id"]
    assert f"statepipe resume {run_id}" in piped.stderr.splitlines()[-1]
    print(f"run | head -3 returned after {took:.2f}s")  # a figure, not an assertion
    assert cli.json("inspect", run_id, "--json")["run"]["state"] == "interrupted"
    done = cli("rerun", run_id, "--set", "seconds=0")
    assert done.returncode == 0, done.stderr
    assert cli.json("inspect", run_id, "--json")["run"]["state"] == "succeeded"


def _read_pty(fd: int, until: float) -> bytes:
    out = b""
    while time.monotonic() < until:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if not ready:
            continue
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # the other side closed
            break
        if not chunk:
            break
        out += chunk
    return out


def test_a_second_ctrl_c_restores_the_cursor_and_ends_with_the_resume_hint(db_url):
    main, side = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "statepipe", "run", QUIET, "-i", "seconds=30"],
        cwd=REPO, env=cli_env(COLUMNS="100", TERM="xterm"), stdin=side, stdout=side, stderr=side, close_fds=True,
    )
    os.close(side)
    seen = _read_pty(main, time.monotonic() + 3.0)
    assert b"silent" in seen
    proc.send_signal(signal.SIGINT)
    seen += _read_pty(main, time.monotonic() + 0.5)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=30) == 130
    seen += _read_pty(main, time.monotonic() + 1.0)
    os.close(main)
    hidden, shown = seen.rfind(b"\x1b[?25l"), seen.rfind(b"\x1b[?25h")
    assert hidden != -1 and shown > hidden  # the cursor is shown again after it was last hidden
    last = [line for line in seen.decode(errors="replace").splitlines() if line.strip()][-1]
    assert "statepipe resume " in last
