"""Fault injection with real processes and the real database: whatever happens to a process or to
PostgreSQL, a run keeps going, or stops in a state `resume` (or another worker) continues, and the
store never shows a completed step executed twice.

The workflow is tests/workflows/faulty.py: seed -> (flaky with retries, branch, a fan-out with a
retried child) -> join, each step compensable. Its result is a pure function of its input.

What "succeeded exactly once" means below (`assert_each_step_succeeded_once`): every step and
fan-out child is `succeeded` with exactly one succeeded attempt, its last; the attempts before it
are the designed transient failures (flaky and fan[1] on attempt 1) or attempts `abandoned`
because their process died or was stopped; attempt numbers run 1..n with no gap.

The default suite runs a quick subset; `pytest -m slow` runs the long variants: 32 kill -9 trials
at random moments, 12 trials that also kill the resumes, worker kills at random moments, a
database outage longer than the workers' lease, and Ctrl-C on a batch. FAULT_SEED=<n> changes the
random trials' seed (each failure message names the seed and the delays, to replay it).

Exit codes checked here: 0 ok (also a paused run), 1 a run failed (`batch`: some input failed),
4 conflict (resume of a cancelled run), 6 the run was cancelled, 130 interrupted (SIGTERM/SIGINT).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO, EventReader, cli_env, error_message, is_event, kill9, step_of, workflow_path

from statepipe.errors import EXIT_INTERRUPTED, EXIT_RUN_CANCELLED, EXIT_RUN_FAILED
from statepipe.store import embedded
from statepipe.store.database import open_store

FAULTY = workflow_path("faulty")
STEPS = ("seed", "flaky", "branch", "fan", "join")


def expected_result(items: int = 5) -> dict[str, Any]:
    """faulty's result, worked out by hand from its code (join's output)."""
    return {
        "flaky": sum(10 * n for n in range(items)),
        "branch": "-".join(f"item-{n}" for n in range(items)),
        "squares": [n * n for n in range(items)],
    }


EXPECTED = expected_result(5)
assert EXPECTED == {"flaky": 100, "branch": "item-0-item-1-item-2-item-3-item-4", "squares": [0, 1, 4, 9, 16]}

# the attempts faulty fails on purpose when `transient` (the default)
DESIGNED_FAILURES = {("flaky", "", 1), ("fan", "1", 1)}


# -- helpers ---------------------------------------------------------------------------------------


def key(step: Any) -> tuple[str, str]:
    return (step.name, step.item)


def parse_events(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def faulty_args(*options: str, **inputs: Any) -> list[str]:
    args = ["run", FAULTY, *options]
    for k, v in inputs.items():
        args += ["-i", f"{k}={json.dumps(v) if not isinstance(v, str) else v}"]
    return args


def work_steps(snap: Any) -> list[Any]:
    """The workflow's own steps and fan-out children (not compensations)."""
    return [s for s in snap.steps if s.compensates is None]


def assert_each_step_succeeded_once(snap: Any, items: int = 5, transient: bool = True) -> None:
    assert snap.run.state == "succeeded", (snap.run.state, snap.run.error)
    assert [s.name for s in snap.parents()] == list(STEPS)
    assert [c.item for c in snap.children("fan")] == [str(i) for i in range(items)]
    assert not snap.compensations()
    for step in work_steps(snap):
        states = [a.state for a in step.attempts]
        assert step.state == "succeeded", (key(step), step.state)
        assert states.count("succeeded") == 1 and states[-1] == "succeeded", (key(step), states)
        assert [a.number for a in step.attempts] == list(range(1, len(states) + 1)), key(step)
        assert step.attempt == len(states), key(step)
        for a in step.attempts[:-1]:
            if a.state == "failed":
                assert transient and (step.name, step.item, a.number) in DESIGNED_FAILURES, (key(step), a.number, a.error)
            else:
                assert a.state == "abandoned", (key(step), a.number, a.state)
    assert snap.run.owner is None  # released at the end


def resume_to_success(cli: Any, store: Any, run_id: str, *options: str, transient: bool = True) -> Any:
    """`statepipe resume` the run; it must end succeeded, every step once, with faulty's result.
    Returns the run's snapshot for what a test checks beyond that."""
    resumed = cli("resume", run_id, *options)
    assert resumed.returncode == 0, resumed.stderr
    after = store.snapshot(run_id)
    assert_each_step_succeeded_once(after, transient=transient)
    assert after.result() == EXPECTED
    return after


def owner_pid(owner: str | None) -> int | None:
    return int(owner.split(":")[1]) if owner else None


def wait_for(predicate: Any, timeout: float, what: str, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(interval)


def assert_alive(*procs: subprocess.Popen[str]) -> None:
    """Fail at once (not at a wait's deadline) when a background process has exited."""
    for p in procs:
        if p.poll() is not None:
            raise AssertionError(f"{' '.join(p.args[2:4])} exited {p.returncode}: {p.stderr.read()[-800:] if p.stderr else ''}")


def start_run(spawn: Any, *options: str, **inputs: Any) -> tuple[subprocess.Popen[str], EventReader, str]:
    proc = spawn(*faulty_args(*options, **inputs))
    reader = EventReader(proc)
    return proc, reader, reader.run_id


def read_log(path: Path) -> list[dict[str, Any]]:
    """The JSON lines a workflow appended; a last line still being written is left out."""
    records = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return records


# -- kill -9 of `run` at random moments ---------------------------------------------------------------


def _reference(cli: Any, store: Any, pause: float) -> tuple[Any, float]:
    """An uninterrupted run: its result, and how long it takes from run_created to the end."""
    began = time.monotonic()
    done = cli(*faulty_args(pause=pause))
    assert done.returncode == 0, done.stderr
    snap = store.snapshot(parse_events(done.stdout)[0]["run_id"])
    assert_each_step_succeeded_once(snap)
    assert all(len(s.attempts) == 1 for s in work_steps(snap) if (s.name, s.item, 1) not in DESIGNED_FAILURES)
    return snap.result(), min(snap.run.executing_s or 0, time.monotonic() - began)


def _kill_and_resume_trial(spawn: Any, cli: Any, store: Any, delays: list[float], pause: float, reference: Any) -> bool:
    """One trial: start the run, kill -9 it after delays[0]; then start `resume` and kill -9 that
    after each further delay; finally resume it to the end. True when the first kill caught the
    run unfinished (so it had to be resumed)."""
    proc, reader, run_id = start_run(spawn, pause=pause)
    first_unfinished = None
    done_before: dict[tuple[str, str], Any] = {}  # every step completed at some kill, as it was then
    in_flight: set[tuple[str, str]] = set()  # every attempt some kill caught executing
    where = f"run {run_id}"
    for n, delay in enumerate(delays):
        if n:
            proc = spawn("resume", run_id)
            reader = EventReader(proc)
        time.sleep(delay)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)  # it may have ended on its own just before: 0 is fine
        assert proc.wait(timeout=10) in (0, -signal.SIGKILL), where
        before = store.snapshot(run_id)
        done_now = {key(s): s for s in work_steps(before) if s.state == "succeeded"}
        flying = {key(s) for s in work_steps(before) if s.state == "running" and not s.fanout}
        where += f"; kill {n + 1} after {delay:.3f}s: {len(done_now)} steps done, in flight {sorted(flying)}"
        # every success the process printed had been committed before it was printed
        printed = {(e["step"], e["item"] or "") for e in reader.rest(timeout=10) if e["type"] == "step_succeeded"}
        assert printed <= set(done_now), where
        # what had completed at an earlier kill is still there, untouched
        for k, old in done_before.items():
            assert [(a.number, a.state) for a in done_now[k].attempts] == [(a.number, a.state) for a in old.attempts], (where, k)
        for k, s in done_now.items():
            done_before.setdefault(k, s)
        in_flight |= flying
        if first_unfinished is None:
            first_unfinished = before.run.state != "succeeded"
        if before.run.state == "succeeded":
            break
        assert before.run.state in ("pending", "running"), where

    if store.get_run(run_id).state != "succeeded":
        resumed = cli("resume", run_id)
        assert resumed.returncode == 0, (where, resumed.stderr)
        restarted = {(e["step"], e["item"] or "") for e in parse_events(resumed.stdout) if e["type"] == "step_started"}
        assert not restarted & set(done_before), (where, restarted & set(done_before))

    after = store.snapshot(run_id)
    assert_each_step_succeeded_once(after)
    for k, old in done_before.items():  # completed before a kill: kept as it was
        new = step_of(after, *k)
        assert [(a.number, a.state, a.finished_at) for a in new.attempts] == [
            (a.number, a.state, a.finished_at) for a in old.attempts
        ], (where, k)
    for k in in_flight:  # an attempt in flight at a kill was abandoned, then a new one succeeded
        new = step_of(after, *k)
        assert "abandoned" in [a.state for a in new.attempts], (where, k)
    assert after.result() == reference == EXPECTED, where
    return bool(first_unfinished)


def _random_kill_trials(spawn: Any, cli: Any, store: Any, trials: int, seed: int, kills: int = 1) -> None:
    """`kills` > 1: the resumes are killed too (at random moments) before a last resume."""
    pause = 0.2
    reference, duration = _reference(cli, store, pause)
    rng = random.Random(seed)  # reproducible: the seed and the delays are in the failure message
    interrupted = 0
    for trial in range(trials):
        # the first delay counts from run_created; a resume needs ~1 s to start up before it works
        delays = [rng.uniform(0.0, duration * 0.8)] + [rng.uniform(0.5, 1.0 + duration) for _ in range(kills - 1)]
        try:
            interrupted += _kill_and_resume_trial(spawn, cli, store, delays, pause, reference)
        except AssertionError as exc:
            raise AssertionError(f"trial {trial} (seed {seed}, delays {[round(d, 3) for d in delays]}): {exc}") from exc
    print(f"{interrupted} of {trials} trials killed the run unfinished (seed {seed}, {kills} kill(s) each)")
    # the kills must mostly land inside the run, or the trials prove little
    assert interrupted >= max(1, trials * 2 // 3), f"only {interrupted} of {trials} kills caught the run unfinished"


def test_kill_9_at_random_moments_then_resume_quick(spawn, cli, store):
    _random_kill_trials(spawn, cli, store, trials=4, seed=20240521)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_kill_9_at_random_moments_then_resume_30_trials(spawn, cli, store):
    _random_kill_trials(spawn, cli, store, trials=32, seed=int(os.environ.get("FAULT_SEED", "7")))


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_kill_9_of_run_and_of_its_resumes_at_random_moments(spawn, cli, store):
    _random_kill_trials(spawn, cli, store, trials=12, seed=int(os.environ.get("FAULT_SEED", "11")), kills=3)


# -- workers: kill -9 of one of three, takeover by another -------------------------------------------


def _worker_takeover(spawn: Any, cli: Any, store: Any, runs: int, kill_when: Any) -> set[tuple[str, str]]:
    """Three workers share `runs` detached runs; the owner of the first run that satisfies
    `kill_when` is killed -9. Returns the steps it had in flight."""
    lease = "2"
    run_ids = []
    for _ in range(runs):
        done = cli("run", "--detach", FAULTY, "-i", "pause=0.5")
        assert done.returncode == 0, done.stderr
        run_ids.append(done.stdout.strip())
    workers = [spawn("worker", "--concurrency", "1", "--grace", "10", STATEPIPE_LEASE_SECONDS=lease) for _ in range(3)]
    by_pid = {w.pid: w for w in workers}

    def victim_run() -> Any:
        assert_alive(*workers)
        for run_id in run_ids:
            snap = store.snapshot(run_id)
            if snap.run.owner and owner_pid(snap.run.owner) in by_pid and kill_when(snap):
                return snap
        return None

    snap = wait_for(victim_run, 60, "a worker mid-run")
    victim = by_pid[owner_pid(snap.run.owner)]
    kill9(victim)
    killed_at = datetime.now(timezone.utc)
    at_kill = store.snapshot(snap.run.id)
    in_flight = {key(s) for s in work_steps(at_kill) if s.state == "running" and not s.fanout}

    finished = wait_for(lambda: all(store.get_run(r).state == "succeeded" for r in run_ids), 90, "every run to finish", 0.2)
    assert finished
    survivors = [w for w in workers if w is not victim]
    for w in survivors:
        w.send_signal(signal.SIGTERM)
    for w in survivors:
        assert w.wait(timeout=30) == 0, w.stderr.read()

    for run_id in run_ids:
        after = store.snapshot(run_id)
        assert_each_step_succeeded_once(after)
        assert after.result() == EXPECTED
    # the orphaned run was resumed once, by a surviving worker, after the kill: on this host at
    # once (the dead worker's pid is gone; test_recovery.py shows it before the lease ends)
    events = store.events_after(snap.run.id, 0, 100_000)
    resumes = [e for e in events if e.type == "run_resumed"]
    assert len(resumes) == 1, [e.data for e in resumes]
    assert owner_pid(resumes[0].data["owner"]) in {w.pid for w in survivors}
    assert resumes[0].ts >= killed_at
    assert resumes[0].data["from_state"] == "running"
    abandoned = {key(s) for s in work_steps(store.snapshot(snap.run.id)) if "abandoned" in [a.state for a in s.attempts]}
    assert abandoned == in_flight  # the attempts the dead worker had in flight, and only those
    return in_flight


def test_sigterm_on_a_worker_drains_its_run_and_another_worker_finishes_it(spawn, cli, store):
    done = cli("run", "--detach", FAULTY, "-i", "pause=0.6", "-i", "transient=false")
    assert done.returncode == 0, done.stderr
    run_id = done.stdout.strip()
    worker = spawn("worker", "--grace", "10")

    def mid_run() -> Any:
        assert_alive(worker)
        snap = store.snapshot(run_id)
        branch = step_of(snap, "branch")
        return snap if owner_pid(snap.run.owner) == worker.pid and branch.state == "running" else None

    at_signal = wait_for(mid_run, 60, "the worker to execute the run")
    running_at_signal = {key(s) for s in work_steps(at_signal) if s.state == "running" and not s.fanout}
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=30) == 0, worker.stderr.read()

    drained = store.snapshot(run_id)
    assert drained.run.state == "running" and drained.run.owner is None  # released: claimable at once
    states = {key(s): s.state for s in work_steps(drained)}
    for k in running_at_signal:
        assert states[k] == "succeeded", k
    assert states[("join", "")] == "pending"

    other = cli("worker", "--until-idle")
    assert other.returncode == 0, other.stderr
    assert "worker stopped after finishing 1 run(s)" in other.stderr
    after = store.snapshot(run_id)
    assert_each_step_succeeded_once(after, transient=False)
    assert all(len(s.attempts) == 1 for s in work_steps(after))  # drained, so nothing was abandoned
    assert after.result() == EXPECTED


def _seed_done(snap: Any) -> bool:
    return any(s.name == "seed" and s.state == "succeeded" for s in snap.steps)


def test_kill_9_of_one_of_three_workers_mid_run_the_others_take_it_over(spawn, cli, store):
    in_flight = _worker_takeover(spawn, cli, store, runs=3, kill_when=_seed_done)
    assert in_flight, "the killed worker should have had steps in flight"


@pytest.mark.slow
@pytest.mark.parametrize("trial", range(4))
def test_kill_9_of_a_worker_at_a_random_moment_slow(spawn, cli, store, trial):
    rng = random.Random(1000 + trial)
    threshold = rng.randint(1, 9)  # steps done when the owner is killed

    def done_enough(snap: Any) -> bool:
        return sum(1 for s in work_steps(snap) if s.state == "succeeded") >= threshold

    _worker_takeover(spawn, cli, store, runs=3, kill_when=done_enough)


def test_a_frozen_worker_is_taken_over_and_once_thawed_writes_nothing_and_keeps_serving(spawn, cli, store):
    """SIGSTOP (a laptop closed, a VM paused) instead of kill -9: the frozen worker's lease lapses,
    another worker finishes its run; when it wakes up, its stale writes are fenced off, and it
    stays up to take new work."""
    done = cli("run", "--detach", FAULTY, "-i", "pause=0.5")
    assert done.returncode == 0, done.stderr
    run_id = done.stdout.strip()
    first = spawn("worker", "--concurrency", "1", STATEPIPE_LEASE_SECONDS="2")
    def mid_run() -> bool:
        assert_alive(first)
        snap = store.snapshot(run_id)
        return owner_pid(snap.run.owner) == first.pid and _seed_done(snap)

    wait_for(mid_run, 60, "the first worker to be mid-run")
    os.kill(first.pid, signal.SIGSTOP)
    try:
        second = spawn("worker", "--concurrency", "1", STATEPIPE_LEASE_SECONDS="2")
        wait_for(lambda: assert_alive(second) or store.get_run(run_id).state == "succeeded", 60, "the second worker to finish the run", 0.2)
        finished = store.snapshot(run_id)
    finally:
        os.kill(first.pid, signal.SIGCONT)
    assert_each_step_succeeded_once(finished)
    assert finished.result() == EXPECTED
    resumes = [e for e in store.events_after(run_id, 0, 100_000) if e.type == "run_resumed"]
    assert [owner_pid(e.data["owner"]) for e in resumes] == [second.pid]

    time.sleep(2.0)  # the thawed worker's steps end, its commits are refused, its heartbeat fails
    assert_alive(first, second)
    after = store.snapshot(run_id)
    assert after.run.last_seq == finished.run.last_seq  # fenced off: not one event written
    assert [(key(s), s.state, len(s.attempts)) for s in after.steps] == [(key(s), s.state, len(s.attempts)) for s in finished.steps]

    second.send_signal(signal.SIGTERM)  # leave only the thawed worker to take the next run
    assert second.wait(timeout=30) == 0
    done = cli("run", "--detach", FAULTY, "-i", "pause=0.05")
    next_run = done.stdout.strip()
    wait_for(lambda: assert_alive(first) or store.get_run(next_run).state == "succeeded", 60, "the thawed worker to run new work", 0.2)
    events = store.events_after(next_run, 0, 100_000)
    assert owner_pid(next(e for e in events if e.type == "run_started").data["owner"]) == first.pid
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=30) == 0


# -- PostgreSQL restart in the middle of a run --------------------------------------------------------


def skip_unless_embedded(server_url: str) -> None:
    """These tests stop and start the server: only the embedded one of this test session."""
    info = embedded.status()
    if "STATEPIPE_HOME" not in os.environ or not info.running or info.url != server_url:
        pytest.skip("the database server is external (STATEPIPE_DATABASE_URL): the test cannot restart it")


def assert_events_whole(store: Any, snap: Any) -> None:
    """Every seq from 1 to the run's last, and one run_succeeded: nothing lost, nothing twice."""
    events = store.events_after(snap.run.id, 0, 100_000)
    assert [e.seq for e in events] == list(range(1, snap.run.last_seq + 1))
    assert sum(1 for e in events if e.type == "run_succeeded") == 1


def _start_embedded() -> str:
    """Start the embedded server again, from a fresh process: pgserver caches its handle per
    process, so the test process could not restart it itself."""
    code = "from statepipe.store import embedded; print(embedded.ensure_running().url)"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_a_postgres_restart_in_the_middle_of_a_run_does_not_stop_it(spawn, cli, server_url, db_url):
    skip_unless_embedded(server_url)
    proc, reader, run_id = start_run(spawn, pause=0.8)
    reader.until(is_event("step_started", "branch"), timeout=60)
    try:
        stopped = cli("db", "stop")
        assert stopped.returncode == 0 and stopped.stdout.strip() == "stopped", stopped.stderr
        assert not embedded.status().running
        time.sleep(1.5)  # the running steps finish while the database is away
    finally:
        url = _start_embedded()
    assert url == server_url
    assert proc.wait(timeout=120) == 0, proc.stderr.read()

    store = open_store(db_url, max_size=2)  # a fresh pool: the old connections died with the server
    try:
        snap = store.snapshot(run_id)
        assert_each_step_succeeded_once(snap)
        assert snap.result() == EXPECTED
        assert_events_whole(store, snap)
    finally:
        store.pool.close()


def test_a_run_killed_while_the_database_was_down_reruns_what_it_could_not_commit(spawn, cli, server_url, db_url):
    skip_unless_embedded(server_url)
    proc, reader, run_id = start_run(spawn, pause=0.4, transient=False)
    reader.until(is_event("step_started", "branch"), timeout=60)
    try:
        assert cli("db", "stop").returncode == 0
        time.sleep(1.0)  # branch finishes, in memory only: its commit waits for the database
        kill9(proc)  # ... and dies with the process
    finally:
        _start_embedded()
    printed = {(e["step"], e["item"] or "") for e in reader.events if e["type"] == "step_succeeded"}
    assert ("branch", "") not in printed

    resumed = cli("resume", run_id)
    assert resumed.returncode == 0, resumed.stderr
    store = open_store(db_url, max_size=2)
    try:
        snap = store.snapshot(run_id)
        assert_each_step_succeeded_once(snap, transient=False)
        branch = step_of(snap, "branch")
        assert [a.state for a in branch.attempts] == ["abandoned", "succeeded"]  # run again, recorded once
        assert snap.result() == EXPECTED
    finally:
        store.pool.close()


@pytest.mark.slow
def test_a_database_outage_longer_than_the_lease_lets_one_worker_finish_each_run_exactly_once(spawn, cli, store, server_url, db_url):
    """Two workers, a 2 s lease, and PostgreSQL away for 4 s: when it is back, every lease has
    lapsed, so a run may change hands; whoever ends up owning it, it finishes once, and both
    workers stay up."""
    skip_unless_embedded(server_url)
    run_ids = []
    for _ in range(2):
        done = cli("run", "--detach", FAULTY, "-i", "pause=0.5")
        assert done.returncode == 0, done.stderr
        run_ids.append(done.stdout.strip())
    workers = [spawn("worker", "--concurrency", "1", STATEPIPE_LEASE_SECONDS="2") for _ in range(2)]
    wait_for(lambda: assert_alive(*workers) or all(_seed_done(store.snapshot(r)) for r in run_ids), 60, "both runs to be mid-way")
    try:
        assert cli("db", "stop").returncode == 0
        time.sleep(4.0)
    finally:
        _start_embedded()
    fresh = open_store(db_url, max_size=2)
    try:
        wait_for(lambda: all(fresh.get_run(r).state == "succeeded" for r in run_ids), 120, "both runs to finish", 0.3)
        assert all(w.poll() is None for w in workers), "a worker died"
        for run_id in run_ids:
            snap = fresh.snapshot(run_id)
            assert_each_step_succeeded_once(snap)
            assert snap.result() == EXPECTED
            assert_events_whole(fresh, snap)
    finally:
        fresh.pool.close()
    for w in workers:
        w.send_signal(signal.SIGTERM)
    for w in workers:
        assert w.wait(timeout=30) == 0, w.stderr.read()


# -- cancel and pause from another process -------------------------------------------------------------


def test_cancel_from_another_process_stops_the_live_run_and_resume_refuses(spawn, cli, store):
    proc, reader, run_id = start_run(spawn, pause=0.3, slow={"branch": 3})
    reader.until(is_event("step_started", "branch"), timeout=60)
    owner = store.get_run(run_id).owner

    done = cli("cancel", run_id)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"{run_id}  running -> cancelled (carried out by {owner})"
    assert proc.wait(timeout=30) == EXIT_RUN_CANCELLED
    assert reader.rest(timeout=10)[-1]["type"] == "run_cancelled"

    snap = store.snapshot(run_id)
    assert snap.run.state == "cancelled" and snap.run.owner is None and snap.run.requested is None
    states = {key(s): s.state for s in work_steps(snap)}
    assert states[("seed", "")] == "succeeded"
    assert states[("branch", "")] == "cancelled" and states[("join", "")] == "cancelled"
    assert not {k for k, v in states.items() if v in ("running", "pending", "waiting")}
    branch = step_of(snap, "branch")
    assert [(a.state, a.error) for a in branch.attempts] == [("cancelled", "cancelled")]

    again = cli("resume", run_id)
    assert again.returncode == 4
    assert error_message(again) == f"run {run_id} already cancelled; nothing to resume"


def test_cancel_of_a_run_whose_process_died_cancels_it_at_once(spawn, cli, store):
    proc, reader, run_id = start_run(spawn, pause=0.3, slow={"branch": 3})
    reader.until(is_event("step_started", "branch"), timeout=60)
    kill9(proc)

    began = time.monotonic()
    done = cli("cancel", run_id)
    assert done.returncode == 0, done.stderr
    assert time.monotonic() - began < 10  # no waiting for the dead owner's lease
    assert done.stdout.strip() == f"{run_id}  running -> cancelled"
    snap = store.snapshot(run_id)
    assert snap.run.state == "cancelled" and snap.run.owner is None
    for step in work_steps(snap):
        assert step.state in ("succeeded", "cancelled"), key(step)
    branch = step_of(snap, "branch")
    assert [a.state for a in branch.attempts] == ["abandoned"]  # the attempt that died with the process
    assert store.events_after(run_id, 0, 100_000)[-1].type == "run_cancelled"


def test_pause_of_a_run_whose_process_died_rests_it_paused_and_resume_completes(spawn, cli, store):
    proc, reader, run_id = start_run(spawn, pause=0.3, slow={"branch": 3})
    reader.until(is_event("step_started", "branch"), timeout=60)
    kill9(proc)

    done = cli("pause", run_id)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"{run_id}  running -> paused"
    paused = store.snapshot(run_id)
    assert paused.run.state == "paused" and paused.run.owner is None
    branch = step_of(paused, "branch")
    assert branch.state == "pending" and [a.state for a in branch.attempts] == ["abandoned"]

    resume_to_success(cli, store, run_id)


def test_cancel_of_a_paused_run_needs_no_process_and_cancels_what_was_left(cli, store):
    gated = f"{workflow_path('policies')}:gated"  # pauses itself when `fragile` runs out of retries
    done = cli("run", gated)
    assert done.returncode == 0, done.stderr
    run_id = parse_events(done.stdout)[0]["run_id"]
    assert store.get_run(run_id).state == "paused"

    cancelled = cli("cancel", run_id)
    assert cancelled.returncode == 0, cancelled.stderr
    assert cancelled.stdout.strip() == f"{run_id}  paused -> cancelled"
    snap = store.snapshot(run_id)
    assert snap.run.state == "cancelled" and snap.run.owner is None
    assert {s.name: s.state for s in snap.steps} == {"prepare": "succeeded", "fragile": "cancelled", "finish": "cancelled"}
    again = cli("pause", run_id)  # nothing left to pause: said, not an error
    assert again.returncode == 0 and again.stdout.strip() == f"{run_id}  cancelled -> cancelled (already cancelled)"


def test_pause_from_another_process_lets_running_steps_finish_then_resume_completes(spawn, cli, store):
    proc, reader, run_id = start_run(spawn, pause=0.6)
    reader.until(is_event("step_started", "branch"), timeout=60)
    owner = store.get_run(run_id).owner

    done = cli("pause", run_id)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"{run_id}  running -> running (requested; {owner} will carry it out)"
    assert proc.wait(timeout=30) == 0  # a paused run is not an error
    assert f"paused; continue with: statepipe resume {run_id}" in " ".join(proc.stderr.read().split())

    paused = store.snapshot(run_id)
    assert paused.run.state == "paused" and paused.run.owner is None and paused.run.requested is None
    states = {key(s): s.state for s in work_steps(paused)}
    assert states[("branch", "")] == "succeeded"  # running when paused: allowed to finish
    assert states[("join", "")] == "pending"  # nothing new started
    assert not [k for k, v in states.items() if v == "running" and k != ("fan", "")]
    assert not [s for s in work_steps(paused) if any(a.state == "abandoned" for a in s.attempts)]

    after = resume_to_success(cli, store, run_id)
    assert not [s for s in work_steps(after) if any(a.state == "abandoned" for a in s.attempts)]


def test_pause_now_stops_running_steps_which_run_again_on_resume(spawn, cli, store):
    proc, reader, run_id = start_run(spawn, pause=0.3, slow={"branch": 3})
    reader.until(is_event("step_started", "branch"), timeout=60)
    owner = store.get_run(run_id).owner

    done = cli("pause", "--now", run_id)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"{run_id}  running -> paused (carried out by {owner})"
    assert proc.wait(timeout=30) == 0

    paused = store.snapshot(run_id)
    assert paused.run.state == "paused" and paused.run.owner is None
    branch = step_of(paused, "branch")
    # stopped at its next emit, not allowed to finish its 3 s attempt: it runs again on resume
    assert branch.state == "pending" and [a.state for a in branch.attempts] == ["abandoned"]
    assert (branch.attempts[0].finished_at - branch.attempts[0].started_at).total_seconds() < 2.5

    after = resume_to_success(cli, store, run_id)
    branch = step_of(after, "branch")
    assert [a.state for a in branch.attempts] == ["abandoned", "succeeded"]


# -- SIGTERM drain ------------------------------------------------------------------------------------


def test_sigterm_drains_running_steps_within_grace_and_resume_completes(spawn, cli, store):
    # transient failures off: every step running at the signal can finish cleanly
    proc, reader, run_id = start_run(spawn, pause=0.6, transient=False)
    reader.until(is_event("step_started", "branch"), timeout=60)
    running_at_signal = {key(s) for s in work_steps(store.snapshot(run_id)) if s.state == "running" and not s.fanout}
    assert ("branch", "") in running_at_signal

    began = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == EXIT_INTERRUPTED
    assert time.monotonic() - began < 0.6 + 2.0  # the 0.6 s steps finished; nothing new began
    stderr = " ".join(proc.stderr.read().split())
    assert "stopping the run: no new steps" in stderr
    assert f"the run is resumable: statepipe resume {run_id}" in stderr
    assert reader.rest(timeout=10)[-1]["type"] == "run_interrupted"

    drained = store.snapshot(run_id)
    assert drained.run.state == "running" and drained.run.owner is None  # resumable at once
    states = {key(s): s.state for s in work_steps(drained)}
    for k in running_at_signal:
        assert states[k] == "succeeded", k
    assert states[("join", "")] == "pending"
    assert not [k for k, v in states.items() if v == "running" and k != ("fan", "")]

    after = resume_to_success(cli, store, run_id, transient=False)
    assert all(len(s.attempts) == 1 for s in work_steps(after))  # a drain abandons nothing


def test_sigterm_with_a_short_grace_abandons_the_running_attempts_and_resume_reruns_them(spawn, cli, store):
    proc, reader, run_id = start_run(spawn, "--grace", "0.3", pause=0.05, slow={"seed": 4}, transient=False)
    reader.until(is_event("step_started", "seed"), timeout=60)
    began = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    # seed's 4 s first attempt gets 0.3 s, then is stopped at its next emit (every second)
    assert proc.wait(timeout=30) == EXIT_INTERRUPTED
    assert time.monotonic() - began < 3.0
    assert reader.rest(timeout=10)[-1]["type"] == "run_interrupted"

    left = store.snapshot(run_id)
    assert left.run.state == "running" and left.run.owner is None
    seed = step_of(left, "seed")
    assert seed.state == "pending"
    assert [(a.state, a.error) for a in seed.attempts] == [("abandoned", "interrupted")]

    after = resume_to_success(cli, store, run_id, "--grace", "0.3", transient=False)
    seed = step_of(after, "seed")
    assert [a.state for a in seed.attempts] == ["abandoned", "succeeded"]


def test_a_second_sigterm_exits_at_once_and_resume_continues(spawn, cli, store):
    proc, reader, run_id = start_run(spawn, pause=0.05, slow={"seed": 3}, transient=False)
    reader.until(is_event("step_started", "seed"), timeout=60)
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    began = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == EXIT_INTERRUPTED
    assert time.monotonic() - began < 1.5  # did not wait for seed's 3 s attempt

    left = store.snapshot(run_id)
    assert left.run.state == "running"
    assert step_of(left, "seed").state == "running"

    after = resume_to_success(cli, store, run_id, transient=False)  # the owner is dead: no need to wait for its lease
    seed = step_of(after, "seed")
    assert [a.state for a in seed.attempts] == ["abandoned", "succeeded"]


def test_a_transient_failure_during_a_sigterm_drain_leaves_the_step_to_be_retried_on_resume(spawn, cli, store):
    # flaky fails on its attempt 1 (it has 2 retries left) while the run is draining
    proc, reader, run_id = start_run(spawn, pause=0.6)
    reader.until(is_event("step_started", "branch"), timeout=60)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == EXIT_INTERRUPTED

    drained = store.snapshot(run_id)
    assert drained.run.state == "running" and drained.run.owner is None and drained.run.error is None
    assert not drained.compensations()  # a drain is not a failure: nothing is undone
    for k in (("flaky", ""), ("fan", "1")):  # the two designed failures, both during the drain
        step = step_of(drained, *k)
        assert step.state == "waiting" and step.next_attempt_at is not None, (k, step.state, step.error)
        assert [a.state for a in step.attempts] == ["failed"], k

    after = resume_to_success(cli, store, run_id)
    for k in (("flaky", ""), ("fan", "1")):
        assert [a.state for a in step_of(after, *k).attempts] == ["failed", "succeeded"], k


# -- compensation ----------------------------------------------------------------------------------


def _assert_compensated_in_reverse_completion_order(snap: Any, log: Path) -> list[str]:
    """Every completed step that declares a compensation was undone once, newest first; returns
    the compensation labels in the order they ran."""
    done = sorted((s for s in work_steps(snap) if s.state == "succeeded" and not s.fanout),
                  key=lambda s: s.finished_at, reverse=True)
    comps = snap.compensations()
    assert [(c.compensates, c.item) for c in comps] == [(s.name, s.item) for s in done]
    labels = [f"{c.compensates}[{c.item}]" if c.item else c.compensates for c in comps]
    for c in comps:
        assert c.state == "succeeded", (c.name, c.item, c.state)
        assert [a.state for a in c.attempts].count("succeeded") == 1
    records = read_log(log)
    assert [r["step"] for r in records if r["event"] == "done"] == labels  # each once, in order
    # each compensation received the output of the step it undoes
    outputs = {(s.name, s.item): s.output for s in done}
    for r in records:
        if r["event"] == "start":
            name, _, item = r["step"].partition("[")
            assert r["output"] == outputs[(name, item.rstrip("]"))], r
    return labels


def test_a_failed_run_compensates_its_completed_steps_in_reverse_completion_order(cli, store, tmp_path):
    log = tmp_path / "compensations.jsonl"
    done = cli(*faulty_args(pause=0.1, items=3, fail_at="join", log=str(log)))
    assert done.returncode == EXIT_RUN_FAILED, done.stderr
    run_id = parse_events(done.stdout)[0]["run_id"]
    snap = store.snapshot(run_id)
    assert snap.run.state == "failed"
    assert snap.run.error == "step join failed: NonRetryable: join was asked to fail"
    labels = _assert_compensated_in_reverse_completion_order(snap, log)
    assert labels[-1] == "seed" and len(labels) == 6  # seed, flaky, branch, fan[0..2]
    events = parse_events(done.stdout)
    started = [e for e in events if e["type"] == "compensation_started"]
    assert len(started) == 1 and started[0]["data"]["ending"] == "failed"
    finished = [e for e in events if e["type"] == "compensation_finished"]
    assert len(finished) == 1 and finished[0]["data"]["failed"] == []
    assert [e["type"] for e in events][-1] == "run_failed"


def test_a_kill_9_during_compensation_is_resumed_without_repeating_a_finished_compensation(spawn, cli, store, tmp_path):
    log = tmp_path / "compensations.jsonl"
    proc, reader, run_id = start_run(spawn, pause=0.1, items=3, fail_at="join", log=str(log), comp_pause=0.6)
    second = {"n": 0}

    def second_compensation_started(e: dict[str, Any]) -> bool:
        if e["type"] == "step_started" and e["step"].endswith(":compensate"):
            second["n"] += 1
        return second["n"] == 2

    started = reader.until(second_compensation_started, timeout=60)
    in_flight = (started["step"].removesuffix(":compensate"), started["item"] or "")
    in_flight_label = f"{in_flight[0]}[{in_flight[1]}]" if in_flight[1] else in_flight[0]
    # kill it in the middle of its side effect: after its "start" line, before its "done" line
    wait_for(lambda: any(r["event"] == "start" and r["step"] == in_flight_label for r in read_log(log)), 10,
             "the second compensation to begin its work", 0.01)
    kill9(proc)
    before = store.snapshot(run_id)
    finished_before = [c for c in before.compensations() if c.state == "succeeded"]
    assert len(finished_before) == 1

    resumed = cli("resume", run_id)
    assert resumed.returncode == EXIT_RUN_FAILED, resumed.stderr  # it still ends failed, compensated
    after = store.snapshot(run_id)
    assert after.run.state == "failed"
    assert after.run.error == "step join failed: NonRetryable: join was asked to fail"
    labels = _assert_compensated_in_reverse_completion_order(after, log)

    for c in after.compensations():
        states = [a.state for a in c.attempts]
        if (c.compensates, c.item) == in_flight:
            assert states == ["abandoned", "succeeded"]
        else:
            assert states == ["succeeded"], (c.compensates, c.item, states)
    # the compensation finished before the crash kept its attempt; the resume did not start it
    kept = finished_before[0]
    again = next(c for c in after.compensations() if (c.compensates, c.item) == (kept.compensates, kept.item))
    assert again.attempts[0].finished_at == kept.attempts[0].finished_at
    restarted = [(e["step"], e["item"]) for e in parse_events(resumed.stdout) if e["type"] == "step_started"]
    assert all(step.endswith(":compensate") for step, _ in restarted)  # no work step ran again
    assert (kept.name, kept.item or None) not in restarted
    # the side effects: every compensation completed exactly once; only the one in flight at the
    # kill began twice
    records = read_log(log)
    starts = [r["step"] for r in records if r["event"] == "start"]
    assert sorted(starts) == sorted(labels + [in_flight_label])
    assert [r["step"] for r in records if r["event"] == "done"] == labels


def test_a_cancel_during_compensation_lets_the_running_compensation_finish_once(spawn, store, tmp_path):
    log = tmp_path / "compensations.jsonl"
    proc, reader, run_id = start_run(spawn, pause=0.05, items=1, fail_at="join", log=str(log), comp_pause=0.8)
    first = reader.until(lambda e: e["type"] == "step_started" and e["step"].endswith(":compensate"), timeout=60)
    label = first["step"].removesuffix(":compensate") + (f"[{first['item']}]" if first["item"] else "")
    wait_for(lambda: any(r["event"] == "start" and r["step"] == label for r in read_log(log)), 10,
             "the first compensation to begin its work", 0.01)
    store.request(run_id, "cancel")  # what `statepipe cancel` does for a live owner: request + NOTIFY
    proc.wait(timeout=60)

    snap = store.snapshot(run_id)
    assert snap.compensations() and all(c.state == "succeeded" for c in snap.compensations())
    for c in snap.compensations():
        assert [a.state for a in c.attempts] == ["succeeded"], (c.compensates, c.item, [a.state for a in c.attempts])
    starts = [r["step"] for r in read_log(log) if r["event"] == "start"]
    assert len(starts) == len(set(starts)), f"a compensation began twice: {starts}"


def test_cancel_with_compensate_undoes_the_completed_steps_and_ends_cancelled(spawn, cli, store, tmp_path):
    log = tmp_path / "compensations.jsonl"
    proc, reader, run_id = start_run(spawn, pause=0.1, items=3, log=str(log), transient=False, slow={"join": 5})
    reader.until(is_event("step_started", "join"), timeout=60)
    done = cli("cancel", "--compensate", run_id)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().startswith(f"{run_id}  running -> cancelled (carried out by ")
    assert proc.wait(timeout=30) == EXIT_RUN_CANCELLED
    snap = store.snapshot(run_id)
    assert snap.run.state == "cancelled"
    labels = _assert_compensated_in_reverse_completion_order(snap, log)
    assert sorted(labels) == sorted(["seed", "flaky", "branch", "fan[0]", "fan[1]", "fan[2]"])
    join = step_of(snap, "join")
    assert join.state == "cancelled"  # stopped at its next emit, not compensated (it never completed)
    assert [a.state for a in join.attempts] == ["cancelled"]
    events = store.events_after(run_id, 0, 100_000)
    started = [e for e in events if e.type == "compensation_started"]
    assert len(started) == 1 and started[0].data["ending"] == "cancelled"
    assert events[-1].type == "run_cancelled"


# -- detached runs and workers -------------------------------------------------------------------------


def test_run_detach_only_enqueues_and_worker_until_idle_executes_it(cli, store, output_dir):
    done = cli("run", "--detach", FAULTY, "-i", "pause=0.05")
    assert done.returncode == 0, done.stderr
    run_id = done.stdout.strip()
    queued = store.get_run(run_id)
    assert queued.state == "pending" and queued.owner is None

    worker = cli("worker", "--until-idle", "--concurrency", "2")
    assert worker.returncode == 0, worker.stderr
    assert "worker stopped after finishing 1 run(s)" in worker.stderr
    snap = store.snapshot(run_id)
    assert_each_step_succeeded_once(snap)
    assert snap.result() == EXPECTED
    lines = [json.loads(line) for line in (output_dir / "results.jsonl").read_text().splitlines()]
    assert [(r["run_id"], r["state"], r["result"]) for r in lines] == [(run_id, "succeeded", EXPECTED)]


def test_a_worker_claims_for_a_finishing_runs_slot_in_the_transaction_of_its_last_commit(store, monkeypatch):
    """Refilling a slot costs no transaction of its own: the claim rides with the commit that
    ends the run before it, so only the worker's first and last claims go alone."""
    import asyncio

    from statepipe.definition.loader import load
    from statepipe.engine.runtime import Runtime
    from statepipe.store.store import Store

    runtime = Runtime(store)
    runtime.create_runs(load(workflow_path("echo")), [{"n": i} for i in range(3)], detach=True)
    sent: list[tuple[list[str], int]] = []  # per transaction: the run states it writes, the claims with it
    real = Store._commit_changes

    def spy(self: Store, conn: Any, changes: Any, by_run: Any, *args: Any, claims: Any = (), **kwargs: Any) -> Any:
        sent.append(([ch.run.state for ch in changes if ch.run is not None], len(claims)))
        return real(self, conn, changes, by_run, *args, claims=claims, **kwargs)

    monkeypatch.setattr(Store, "_commit_changes", spy)
    try:
        assert asyncio.run(runtime.work(1, until_idle=True)) == 3
    finally:
        runtime.close()
    started, ended = (["running"], 0), (["succeeded"], 1)
    assert sent == [([], 1), started, ended, started, ended, started, ended, ([], 1)]


def _worker_peak(runtime: Any, concurrency: int, stop_after_first_claim: bool = False) -> tuple[int, int]:
    """Run `runtime.work(concurrency, until_idle=True)`; returns (runs finished, most executors
    at once). `stop_after_first_claim`: drain as soon as a run's last commit hands its slot on."""
    import asyncio

    async def main() -> tuple[int, int]:
        peak = 0

        async def watch() -> None:
            nonlocal peak
            while True:
                peak = max(peak, len(runtime.executors))
                await asyncio.sleep(0.002)

        if stop_after_first_claim:
            real = runtime.releasing

            def releasing(run_id: str, change: Any) -> Any:
                done = real(run_id, change)
                runtime.stop()  # SIGTERM while the claim for the slot is on its way
                return done

            runtime.releasing = releasing
        watcher = asyncio.create_task(watch())
        try:
            return await runtime.work(concurrency, until_idle=True), peak
        finally:
            watcher.cancel()

    return asyncio.run(main())


def test_a_worker_hands_a_slot_on_only_once_the_runs_hooks_are_done(store, tmp_path):
    """--concurrency holds while async hooks of ended runs are still running."""
    from statepipe.definition.loader import load
    from statepipe.engine.runtime import Runtime

    slow_hook = tmp_path / "slow_hook.py"
    slow_hook.write_text(
        "import asyncio\n"
        "from statepipe import Workflow\n"
        "async def settle(ctx, meta):\n    await asyncio.sleep(0.2)\n"
        "wf = Workflow('slow_hook', on_complete=settle)\n"
        "@wf.step\n"
        "def only(n: int) -> int:\n    return n\n"
    )
    runtime = Runtime(store)
    try:
        runtime.create_runs(load(str(slow_hook)), [{"n": i} for i in range(3)], detach=True)
        assert _worker_peak(runtime, 1) == (3, 1)
    finally:
        runtime.close()


def test_a_run_claimed_for_a_slot_as_the_worker_drains_is_released_not_executed(store):
    from statepipe.definition.loader import load
    from statepipe.engine.runtime import Runtime

    runtime = Runtime(store)
    try:
        ids = runtime.create_runs(load(workflow_path("echo")), [{"n": i} for i in range(3)], detach=True)
        finished, _ = _worker_peak(runtime, 1, stop_after_first_claim=True)
        runs = [store.get_run(run_id) for run_id in ids]
    finally:
        runtime.close()
    assert finished == 1
    assert [r.state for r in runs] == ["succeeded", "pending", "pending"]
    assert all(r.owner is None for r in runs)  # the second was claimed with the first's end, and let go
    assert runs[1].fencing_token == 2  # it was claimed, then released


def test_a_paused_run_resumed_with_detach_is_finished_by_a_worker(cli, store):
    done = cli("run", "--detach", FAULTY, "-i", "pause=0.05")
    assert done.returncode == 0, done.stderr
    run_id = done.stdout.strip()

    paused = cli("pause", run_id)  # nobody owns the queued run: the command carries the pause out
    assert paused.returncode == 0, paused.stderr
    assert paused.stdout.strip() == f"{run_id}  pending -> paused"
    snap = store.snapshot(run_id)
    assert snap.run.state == "paused" and snap.run.owner is None
    assert all(s.state == "pending" for s in work_steps(snap))

    idle = cli("worker", "--until-idle")  # a paused run is not claimable
    assert idle.returncode == 0, idle.stderr
    assert "worker stopped after finishing 0 run(s)" in idle.stderr
    assert store.get_run(run_id).state == "paused"

    detached = cli("resume", "--detach", run_id)
    assert detached.returncode == 0, detached.stderr
    assert f"run {run_id}: queued for a worker" in detached.stderr
    queued = store.get_run(run_id)
    assert queued.state == "running" and queued.owner is None

    worker = cli("worker", "--until-idle")
    assert worker.returncode == 0, worker.stderr
    assert "worker stopped after finishing 1 run(s)" in worker.stderr
    after = store.snapshot(run_id)
    assert_each_step_succeeded_once(after)
    assert after.result() == EXPECTED


# -- batch --------------------------------------------------------------------------------------------


def _write_inputs(path: Path, inputs: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(i) + "\n" for i in inputs))
    return path


def _results(output_dir: Path) -> list[dict[str, Any]]:
    path = output_dir / "results.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_batch_runs_every_input_and_a_second_invocation_runs_nothing_new(cli, store, output_dir, tmp_path):
    inputs = [{"items": n, "pause": 0.02} for n in range(1, 7)]
    path = _write_inputs(tmp_path / "inputs.jsonl", inputs)
    first = cli("batch", FAULTY, str(path), "--concurrency", "4")
    assert first.returncode == 0, first.stderr
    assert "6 inputs; 6 new, 0 to retry, 0 kept" in " ".join(first.stderr.split())

    results = _results(output_dir)
    assert len(results) == 6  # one line per run
    assert len({r["run_id"] for r in results}) == 6
    by_items = {r["input"]["items"]: r for r in results}
    for n in range(1, 7):
        assert by_items[n]["state"] == "succeeded"
        assert by_items[n]["result"] == expected_result(n)
        assert_each_step_succeeded_once(store.snapshot(by_items[n]["run_id"]), items=n)
    seqs = {r["run_id"]: store.get_run(r["run_id"]).last_seq for r in results}

    second = cli("batch", FAULTY, str(path), "--concurrency", "4", "--jsonl")
    assert second.returncode == 0, second.stderr
    assert "6 inputs; 0 new, 0 to retry, 6 kept" in " ".join(second.stderr.split())
    printed = parse_events(second.stdout)  # --jsonl: every run's result line, in input order
    assert [p["input"]["items"] for p in printed] == list(range(1, 7))
    assert {p["run_id"] for p in printed} == set(seqs)
    assert len(_results(output_dir)) == 6  # nothing ran, so nothing was appended
    assert {r: store.get_run(r).last_seq for r in seqs} == seqs  # not one new event
    assert len(store.list_runs(limit=100)) == 6


@pytest.mark.slow
def test_ctrl_c_on_a_batch_drains_it_and_the_same_command_finishes_it(spawn, cli, store, output_dir, tmp_path):
    inputs = [{"items": n, "pause": 0.3, "transient": False} for n in range(1, 9)]
    path = _write_inputs(tmp_path / "inputs.jsonl", inputs)
    proc = spawn("batch", FAULTY, str(path), "--concurrency", "2")
    wait_for(lambda: assert_alive(proc) or any(r.state == "succeeded" for r in store.list_runs(limit=100)), 60,
             "a first run of the batch to finish")
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == EXIT_INTERRUPTED
    assert "stopping the batch" in proc.stderr.read()
    runs = store.list_runs(limit=100)
    assert len(runs) == 8
    assert all(r.owner is None for r in runs)  # every lease released by the drain
    assert any(r.state != "succeeded" for r in runs), "the batch should have been stopped part-way"
    for r in runs:  # drained: no attempt left in flight
        assert not [s for s in work_steps(store.snapshot(r.id)) if s.state == "running" and not s.fanout]

    again = cli("batch", FAULTY, str(path), "--concurrency", "2")
    assert again.returncode == 0, again.stderr
    assert "8 inputs; 0 new, 0 to retry, 8 kept" in " ".join(again.stderr.split())
    results = _results(output_dir)
    assert sorted(r["run_id"] for r in results) == sorted(r.id for r in runs)  # one line per run
    for r in results:
        snap = store.snapshot(r["run_id"])
        assert_each_step_succeeded_once(snap, items=r["input"]["items"], transient=False)
        assert all(len(s.attempts) == 1 for s in work_steps(snap))  # nothing abandoned, nothing repeated
        assert r["result"] == expected_result(r["input"]["items"])


def test_batch_with_failing_inputs_exits_1_and_a_second_invocation_retries_only_those(cli, store, output_dir, tmp_path):
    # exit code 1 (EXIT_RUN_FAILED) is the documented "some runs of the batch failed" code
    inputs = [{"items": 2, "pause": 0.02}, {"items": 2, "pause": 0.02, "fail_at": "seed"},
              {"items": 3, "pause": 0.02}, {"items": 3, "pause": 0.02, "fail_at": "seed"}]
    path = _write_inputs(tmp_path / "inputs.jsonl", inputs)
    first = cli("batch", FAULTY, str(path), "--concurrency", "4")
    assert first.returncode == EXIT_RUN_FAILED == 1, first.stderr
    results = _results(output_dir)
    assert len(results) == 4
    failed = {r["run_id"] for r in results if r["state"] == "failed"}
    ok = {r["run_id"] for r in results if r["state"] == "succeeded"}
    assert len(failed) == 2 and len(ok) == 2
    for r in results:
        if r["run_id"] in failed:
            assert r["input"]["fail_at"] == "seed"
            assert r["error"] == "step seed failed: NonRetryable: seed was asked to fail"
    seqs = {r: store.get_run(r).last_seq for r in ok}

    second = cli("batch", FAULTY, str(path), "--concurrency", "4")
    assert second.returncode == 1, second.stderr
    assert "4 inputs; 0 new, 2 to retry, 2 kept" in " ".join(second.stderr.split())
    assert {r: store.get_run(r).last_seq for r in ok} == seqs  # succeeded runs untouched
    for run_id in failed:
        seed = step_of(store.snapshot(run_id), "seed")
        assert [a.state for a in seed.attempts] == ["failed", "failed"]  # retried once, failed again
    assert len(store.list_runs(limit=100)) == 4
