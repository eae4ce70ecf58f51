"""Process steps (`process=True`, issue 18): real pool processes, real PostgreSQL.

Runs that must be watched after they end execute in this process (`Here`), so the pool outlives
the run: a process found dead then was killed by the run (its timeout, a cancel, pause --now),
not by the pool closing as the CLI exits. The rest go through the real CLI."""

from __future__ import annotations

import asyncio
import os
import resource
import signal
import textwrap
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from conftest import EventReader, error_message, workflow_path

from statepipe.definition.loader import Loaded, load
from statepipe.definition.workflow import Workflow
from statepipe.engine.runtime import Outcome, Runtime
from statepipe.errors import DefinitionError
from statepipe.processes import pid_alive
from statepipe.store.store import Store

DEADLINE_S = 30.0  # a bound on waiting for what must happen, not a measurement


class Here:
    """A run of tests/workflows/<name>.py executed in this process, on a thread, by a runtime whose
    pool stays open until `close()`."""

    def __init__(self, store: Store, name: str, **run_input: Any) -> None:
        self.loaded: Loaded = load(workflow_path(name))
        self.runtime = Runtime(store)
        self.run_id = self.runtime.create_run(self.loaded, run_input)
        self.outcome: Outcome | None = None
        self._thread = threading.Thread(target=self._execute, daemon=True)
        self._thread.start()

    def _execute(self) -> None:
        self.outcome = asyncio.run(self.runtime.execute(self.run_id, self.loaded))

    def wait(self) -> str:
        self._thread.join(DEADLINE_S)
        assert self.outcome is not None, "the run did not end"
        self.runtime.writer.flush()
        return self.outcome.state

    def close(self) -> None:
        self.runtime.pool.close()
        self.runtime._closing.set()
        self.runtime.writer.close()


@pytest.fixture
def here(store: Store) -> Any:
    started: list[Here] = []

    def start(name: str, **run_input: Any) -> Here:
        run = Here(store, name, **run_input)
        started.append(run)
        return run

    yield start
    for run in started:
        run.close()


def until_file(path: Path) -> str:
    deadline = time.monotonic() + DEADLINE_S
    while not path.exists() or not path.read_text():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)
    return path.read_text()


def attempts(store: Store, run_id: str, name: str, item: str = "") -> list[Any]:
    row = next(s for s in store.snapshot(run_id).steps if s.name == name and s.item == item and s.compensates is None)
    return sorted(row.attempts, key=lambda a: a.number)


def marked(marker: str) -> list[int]:
    """Processes whose environment carries the marker: those a command started, however deep."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                environ = Path(f"/proc/{entry}/environ").read_bytes()
            except OSError:  # gone meanwhile, or not ours to read
                continue
            if marker.encode() in environ:
                found.append(int(entry))
    return found


# -- parallel --------------------------------------------------------------------------------


def busy_cpu_s() -> float:
    """CPU time the whole machine has spent on work (steal included: another machine's), from /proc/stat."""
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in Path("/proc/stat").read_text().split()[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


@pytest.mark.skipif(not Path("/proc/stat").exists() or len(os.sched_getaffinity(0)) < 2, reason="needs 2 CPUs and /proc/stat")
def test_a_cpu_bound_fan_out_of_process_steps_uses_more_cpu_than_wall_time(cli: Any) -> None:
    cores = len(os.sched_getaffinity(0))
    before, busy, began = resource.getrusage(resource.RUSAGE_CHILDREN), busy_cpu_s(), time.perf_counter()
    done = cli("run", workflow_path("proc_burn"), "-i", "n=4", "-i", "cpu_s=1", "--processes", "2")
    wall, busy = time.perf_counter() - began, busy_cpu_s() - busy
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    assert done.returncode == 0, done.stderr
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    assert cpu >= 4.0  # the four branches' own CPU time reached this process: the pool reaps its processes
    others = busy - cpu
    if cpu <= wall and others > (cores - 1.5) * wall:  # parallelism needs idle cores to show
        pytest.skip(f"other work kept {others / wall:.1f} of {cores} CPUs busy meanwhile ({cpu:.1f} s of CPU in {wall:.1f} s)")
    assert cpu > wall, f"{cpu:.2f} s of CPU in {wall:.2f} s: the branches did not run at once"


def test_a_workflow_default_runs_plain_sync_steps_in_processes(here: Any) -> None:
    run = here("proc_default")
    assert run.wait() == "succeeded"
    result = run.outcome.result
    assert result["computed"] != os.getpid()
    assert result["awaited"] == os.getpid() and result["threaded"] == os.getpid()


# -- stopping a process step ---------------------------------------------------------------------


def test_a_timed_out_process_step_is_killed_before_its_side_effect(here: Any, store: Store, tmp_path: Path) -> None:
    run = here("proc_timeout", dir=str(tmp_path))
    assert run.wait() == "succeeded"
    first = int((tmp_path / "pid-1").read_text())
    assert not pid_alive(first)  # the pool is still open: the timeout killed it
    tried = attempts(store, run.run_id, "slow")
    assert [(a.state, a.error) for a in tried] == [("failed", "timed out after 1s"), ("succeeded", None)]
    time.sleep(max(0.0, (tmp_path / "pid-1").stat().st_mtime + 3.5 - time.time()))  # past when it would write
    assert not (tmp_path / "side-effect").exists()


def test_cancel_kills_a_running_process_step(here: Any, cli: Any, store: Store, tmp_path: Path) -> None:
    (tmp_path / "hold").touch()
    run = here("proc_spin", dir=str(tmp_path))
    pid = int(until_file(tmp_path / "pid-0-1"))
    done = cli("cancel", run.run_id, "-y")
    assert done.returncode == 0, done.stderr
    assert run.wait() == "cancelled"
    assert not pid_alive(pid)
    assert [a.state for a in attempts(store, run.run_id, "spin", "0")] == ["cancelled"]
    assert (tmp_path / "unwound-0-1").read_text() == "stopping=True"  # SIGTERM unwound the step


def test_pause_now_kills_a_running_process_step_and_resume_runs_it_again(
    here: Any, cli: Any, store: Store, tmp_path: Path
) -> None:
    (tmp_path / "hold").touch()
    run = here("proc_spin", dir=str(tmp_path))
    pid = int(until_file(tmp_path / "pid-0-1"))
    done = cli("pause", run.run_id, "--now", "-y")
    assert done.returncode == 0, done.stderr
    assert run.wait() == "paused"
    assert not pid_alive(pid)
    (tmp_path / "hold").unlink()
    done = cli("resume", run.run_id)
    assert done.returncode == 0, done.stderr
    assert [a.state for a in attempts(store, run.run_id, "spin", "0")] == ["abandoned", "succeeded"]


# -- a process that dies -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("how", "error"),
    [
        ("exit", "the step's process died: exited with code 3"),
        ("sigkill", "the step's process died: killed by signal 9 (SIGKILL)"),
    ],
)
def test_a_dying_process_fails_only_its_attempt_naming_how_it_died(here: Any, store: Store, how: str, error: str) -> None:
    run = here("proc_crash", how=how)
    assert run.wait() == "succeeded"
    assert run.outcome.result == "attempt 2 survived, and the run's process too"
    assert [(a.state, a.error) for a in attempts(store, run.run_id, "crash")] == [("failed", error), ("succeeded", None)]


def test_an_error_raised_in_a_process_keeps_its_class_and_traceback(here: Any, store: Store) -> None:
    run = here("proc_raise")
    assert run.wait() == "failed"
    (only,) = attempts(store, run.run_id, "broken")  # never_retry recognised the class
    assert only.error == "Unfixable: cannot use the input"
    assert "proc_raise.py" in (only.traceback or "") and 'raise Unfixable(f"cannot use {what}")' in (only.traceback or "")


# -- what a process step says ------------------------------------------------------------------


def test_progress_emit_and_partial_from_a_process_step_arrive_in_order(cli: Any, store: Store) -> None:
    done = cli("run", workflow_path("proc_events"), "--dry-run")
    assert done.returncode == 0, done.stderr
    run_id = done.stderr.split()[1]
    said = [
        (e.type, e.data.get("message") or e.data.get("text") or e.data.get("value"))
        for e in store.events_after(run_id, 0, 1000) if e.step == "talk" and e.type in ("progress", "output", "partial")
    ]
    assert said[:7] == [
        ("progress", "one"), ("output", "alpha"), ("partial", {"n": 1}),
        ("progress", "two"), ("output", "beta"), ("partial", {"n": 2}), ("progress", "three"),
    ]
    reply = said[7:]  # the model's, streamed
    assert reply and all(kind == "output" for kind, _ in reply)
    (attempt,) = attempts(store, run_id, "talk")
    assert attempt.usage["details"][0]["model"] == "counted-by-hand"
    assert attempt.usage["calls"] == 2 and attempt.usage["simulated"]


def test_a_process_step_waits_for_input_as_a_thread_step_does(cli: Any, store: Store) -> None:
    done = cli("run", workflow_path("proc_wait"))
    assert done.returncode == 0, done.stderr
    run_id = done.stderr.split()[1]
    assert store.get_run(run_id).state == "waiting"
    done = cli("send", run_id, "answer", "-i", "ok=true")
    assert done.returncode == 0, done.stderr
    assert [a.state for a in attempts(store, run_id, "ask")] == ["suspended", "succeeded"]
    assert store.results([run_id])[run_id] == "ok=True"


def test_a_process_step_cannot_start_a_child_run_and_says_where_it_can(here: Any, store: Store) -> None:
    run = here("proc_child")
    assert run.wait() == "failed"
    (only,) = attempts(store, run.run_id, "parent")  # not retried: it would fail the same way
    assert only.error == (
        "NonRetryable: ctx.run_workflow cannot start a child run from a process step (process=True); "
        "call it from a step on a thread"
    )


# -- the run's process killed ------------------------------------------------------------------


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="reads the process table in /proc")
def test_kill_9_of_the_run_leaves_no_pool_process_and_resume_succeeds_each_step_once(
    cli: Any, spawn: Any, store: Store, tmp_path: Path
) -> None:
    marker = f"statepipe-test-{uuid.uuid4().hex}"
    (tmp_path / "hold").touch()
    proc = spawn("run", workflow_path("proc_spin"), "-i", f"dir={tmp_path}", "-i", "n=2", "--processes", "2",
                 STATEPIPE_TEST_MARKER=marker)
    reader = EventReader(proc)
    run_id = reader.run_id
    pids = [int(until_file(tmp_path / f"pid-{item}-1")) for item in (0, 1)]
    assert set(pids) <= set(marked(marker))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + DEADLINE_S
    while marked(marker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert marked(marker) == []
    (tmp_path / "hold").unlink()
    done = cli("resume", run_id)
    assert done.returncode == 0, done.stderr
    for row in store.snapshot(run_id).steps:
        assert [a.state for a in row.attempts].count("succeeded") == 1, (row.name, row.item)
    for item in ("0", "1"):
        assert [a.state for a in attempts(store, run_id, "spin", item)] == ["abandoned", "succeeded"]


# -- definitions -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "named"),
    [
        ("wf.step(name='twice', process=True)(lambda n=1: n * 2)", "<lambda>"),
        ("def make():\n    def inner(n: int = 1) -> int:\n        return n\n    return inner\n\n\nwf.step(process=True)(make())",
         "make.<locals>.inner"),
    ],
)
def test_a_process_step_that_its_process_cannot_import_is_refused_when_the_workflow_loads(
    cli: Any, tmp_path: Path, source: str, named: str
) -> None:
    path = tmp_path / "unimportable.py"
    path.write_text("from statepipe import Workflow\n\nwf = Workflow('unimportable')\n\n" + textwrap.dedent(source) + "\n")
    done = cli("run", str(path))
    assert done.returncode == 2
    assert f"a process step's function must be a def at the top level of the workflow's file, which its process imports; {named} is not" in error_message(done)


def test_async_and_llm_steps_cannot_ask_for_a_process() -> None:
    wf = Workflow("refusals")
    with pytest.raises(DefinitionError, match="an async step cannot run in a process"):
        wf.step(process=True)(_waits)
    with pytest.raises(DefinitionError, match="an llm_step cannot run in a process"):
        wf.llm_step(model="gpt-4o-mini", process=True)(_prompt)


async def _waits() -> int:
    return 1


def _prompt() -> str:
    return "hello"
