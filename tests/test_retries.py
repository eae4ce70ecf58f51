"""Failure handling per step, through the real `statepipe` command and the real database: retry
policies (each attempt persisted with its error, the wait persisted with the time of the next
attempt, a kill -9 during the wait resuming that same wait), what is never retried, Retry-After
hints, step and run timeouts, optional steps, pausing the run when retries run out, and hooks.

The workflows are in tests/workflows/policies.py, one small workflow per feature.
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta
from typing import Any

import pytest
from conftest import EventReader, is_event, kill9, workflow_path

from statepipe.definition.policy import RetryPolicy
from statepipe.errors import EXIT_RUN_FAILED

POLICIES = workflow_path("policies")


def ref(obj: str) -> str:
    """A workflow of policies.py, by object name."""
    return f"{POLICIES}:{obj}"


def parse_events(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def ts(value: str | datetime) -> datetime:
    return value if isinstance(value, datetime) else datetime.fromisoformat(value)


def run_workflow(cli: Any, workflow: str, *inputs: str, expect: int = 0, timeout: float = 120) -> tuple[str, list[dict[str, Any]], Any]:
    """`statepipe run` with its stdout piped (one JSON event per line); (run id, events, process)."""
    args: list[str] = []
    for pair in inputs:
        args += ["-i", pair]
    done = cli("run", workflow, *args, timeout=timeout)
    assert done.returncode == expect, (done.returncode, done.stderr)
    events = parse_events(done.stdout)
    return events[0]["run_id"], events, done


def step_row(snap: Any, name: str, item: str = "") -> Any:
    return next(s for s in snap.steps if s.name == name and s.item == item)


def of_type(events: list[dict[str, Any]], type_: str, step: str | None = None) -> list[dict[str, Any]]:
    return [e for e in events if e["type"] == type_ and (step is None or e["step"] == step)]


def stored_events(store: Any, run_id: str) -> list[Any]:
    return store.events_after(run_id, 0, 100_000)


# -- retry policy -------------------------------------------------------------------------------


def test_retry_policy_delays_follow_tenacity_backoffs_and_honour_longer_retry_after_hints():
    class Hinted(Exception):
        retry_after = 2.5

    exp = RetryPolicy(max_attempts=5, initial_interval=0.5, backoff="exponential", max_interval=3.0)
    assert [exp.delay(n) for n in (1, 2, 3, 4)] == [0.5, 1.0, 2.0, 3.0]
    lin = RetryPolicy(max_attempts=5, initial_interval=0.5, backoff="linear")
    assert [lin.delay(n) for n in (1, 2, 3)] == [0.5, 1.0, 1.5]
    fixed = RetryPolicy(max_attempts=5, initial_interval=0.5, backoff="fixed")
    assert [fixed.delay(n) for n in (1, 2, 3)] == [0.5, 0.5, 0.5]
    jittered = RetryPolicy(max_attempts=5, initial_interval=0.5, backoff="fixed", jitter=0.2)
    assert all(0.5 <= jittered.delay(1) <= 0.7 for _ in range(50))
    # a Retry-After hint wins when it asks for longer, never when it asks for less
    assert fixed.delay(1, Hinted()) == 2.5
    assert RetryPolicy(initial_interval=4.0, backoff="fixed").delay(1, Hinted()) == 4.0
    # the attempt budget and the exception classes decide whether to retry
    assert exp.should_retry(4, ConnectionError()) and not exp.should_retry(5, ConnectionError())
    from statepipe import NonRetryable

    assert not exp.should_retry(1, NonRetryable("no"))
    picky = RetryPolicy(max_attempts=3, retry_on=(ConnectionError,), never_retry=(ConnectionResetError,))
    assert picky.should_retry(1, ConnectionError()) and not picky.should_retry(1, KeyError())
    assert not picky.should_retry(1, ConnectionResetError())


def test_failed_attempts_and_the_retry_wait_are_persisted_and_a_kill_9_during_the_wait_resumes_that_wait(spawn, cli, store):
    # fetch fails on attempt 1, then waits 3 s (fixed backoff) before attempt 2, which succeeds
    proc = spawn("run", ref("waits"))
    reader = EventReader(proc)
    run_id = reader.run_id
    retrying = reader.until(is_event("step_retrying", "fetch"), timeout=60)

    # printed only once committed: the failed attempt, its error and the wait are in the store
    waiting = store.snapshot(run_id)
    fetch = step_row(waiting, "fetch")
    assert waiting.run.state == "running"
    assert fetch.state == "waiting" and fetch.attempt == 1
    assert fetch.error == "ConnectionError: provider unreachable (attempt 1)"
    assert [(a.number, a.state, a.error) for a in fetch.attempts] == [
        (1, "failed", "ConnectionError: provider unreachable (attempt 1)")
    ]
    assert fetch.next_attempt_at == ts(retrying["data"]["next_attempt_at"])
    assert retrying["data"]["delay_s"] == 3.0 and retrying["attempt"] == 1
    gap = (fetch.next_attempt_at - fetch.attempts[0].finished_at).total_seconds()
    assert 2.95 <= gap <= 3.05, gap

    next_at = fetch.next_attempt_at
    kill9(proc)  # crash in the middle of the wait
    killed = store.snapshot(run_id)
    assert step_row(killed, "fetch").state == "waiting"
    assert step_row(killed, "fetch").next_attempt_at == next_at

    resumed = cli("resume", run_id)
    assert resumed.returncode == 0, resumed.stderr
    events = parse_events(resumed.stdout)
    resumed_at = ts(of_type(events, "run_resumed")[0]["ts"])
    # the resume began well inside the wait: a fresh 3 s wait from there would end >= 1 s late
    assert resumed_at < next_at - timedelta(seconds=1), "the resume should start early in the wait"

    after = store.snapshot(run_id)
    assert after.run.state == "succeeded"
    fetch = step_row(after, "fetch")
    # the count went on (attempt 2, not a fresh attempt 1) ...
    assert [(a.number, a.state) for a in fetch.attempts] == [(1, "failed"), (2, "succeeded")]
    assert [e["attempt"] for e in of_type(events, "step_started", "fetch")] == [2]
    # ... when the persisted wait ended: not at once, and not after a new 3 s wait
    second_start = fetch.attempts[1].started_at
    assert next_at <= second_start < next_at + timedelta(seconds=0.5)
    assert after.result() == "fetched on attempt 2"


def test_a_kill_9_during_the_last_wait_grants_no_extra_attempt(spawn, cli, store):
    # two attempts in all, both failing: the crash must not reset the budget
    proc = spawn("run", ref("waits"), "-i", "succeed_at=3")
    reader = EventReader(proc)
    run_id = reader.run_id
    reader.until(is_event("step_retrying", "fetch"), timeout=60)
    kill9(proc)

    resumed = cli("resume", run_id)
    assert resumed.returncode == EXIT_RUN_FAILED, resumed.stderr
    snap = store.snapshot(run_id)
    assert snap.run.state == "failed"
    assert snap.run.error == "step fetch failed: ConnectionError: provider unreachable (attempt 2)"
    fetch = step_row(snap, "fetch")
    assert [(a.number, a.state) for a in fetch.attempts] == [(1, "failed"), (2, "failed")]
    assert step_row(snap, "use").state == "pending"


def test_backoff_delays_are_the_policys_and_each_retry_waits_at_least_that_long(cli, store):
    run_id, events, _ = run_workflow(cli, ref("backoffs"))
    expected = {
        "exponential": [0.05, 0.1, 0.2],
        "linear": [0.05, 0.1, 0.15],
        "fixed": [0.05, 0.05, 0.05],
        "capped": [0.1, 0.15, 0.15],  # exponential, capped by max_interval
    }
    snap = store.snapshot(run_id)
    assert snap.run.state == "succeeded"  # every step is optional: their failures do not fail the run
    for name, delays in expected.items():
        retrying = of_type(events, "step_retrying", name)
        assert [e["data"]["delay_s"] for e in retrying] == delays, name
        assert [e["attempt"] for e in retrying] == [1, 2, 3], name
        step = step_row(snap, name)
        assert step.state == "failed"
        assert [(a.number, a.state, a.error) for a in step.attempts] == [
            (n, "failed", f"ConnectionError: {name} attempt {n} failed") for n in (1, 2, 3, 4)
        ]
        for earlier, later, delay in zip(step.attempts, step.attempts[1:], delays):
            gap = (later.started_at - earlier.finished_at).total_seconds()
            assert gap >= delay - 0.005, (name, later.number, gap, delay)
        # the last failure ends the step: no retry is announced after it
        assert of_type(events, "step_failed", name)[0]["attempt"] == 4


@pytest.mark.parametrize(
    ("workflow", "step", "error"),
    [
        ("refusals", "nonretryable", "NonRetryable: the provider rejected the request: invalid API key"),
        ("named", "parse", "ValueError: cannot parse the reply (attempt 1)"),  # never_retry=(ValueError,)
        ("only_some", "lookup", "KeyError: 'missing key (attempt 1)'"),  # retry_on=(ConnectionError,)
    ],
    ids=["NonRetryable", "never_retry-type", "not-in-retry_on"],
)
def test_errors_the_policy_never_retries_fail_the_step_at_once(cli, store, workflow, step, error):
    run_id, events, done = run_workflow(cli, ref(workflow), expect=EXIT_RUN_FAILED)
    snap = store.snapshot(run_id)
    assert snap.run.state == "failed"
    assert snap.run.error == f"step {step} failed: {error}"
    assert [(a.number, a.state, a.error) for a in step_row(snap, step).attempts] == [(1, "failed", error)]
    assert not of_type(events, "step_retrying")
    assert f"failed: step {step} failed: {error}" in " ".join(done.stderr.split())


def test_a_retry_after_hint_carried_by_the_exception_is_honoured(cli, store):
    # the policy would wait 0.01 s; the exception's retry_after asks for 1.2 s
    run_id, events, _ = run_workflow(cli, ref("hinted"), "retry_after=1.2")
    retrying = of_type(events, "step_retrying", "call")
    assert len(retrying) == 1 and retrying[0]["data"]["delay_s"] == 1.2
    assert retrying[0]["data"]["error"] == "RateLimited: 429 Too Many Requests"
    snap = store.snapshot(run_id)
    assert snap.run.state == "succeeded" and snap.result() == "ok"
    first, second = step_row(snap, "call").attempts
    assert (first.state, second.state) == ("failed", "succeeded")
    assert (second.started_at - first.finished_at).total_seconds() >= 1.195


# -- timeouts -------------------------------------------------------------------------------------


def test_a_sync_step_over_its_timeout_is_failed_and_retried_with_a_clear_timeout_error(cli, store):
    began = time.monotonic()
    run_id, events, done = run_workflow(cli, ref("sync_timeout"), expect=EXIT_RUN_FAILED)
    elapsed = time.monotonic() - began
    assert elapsed < 5.0, f"the 6 s step should have been abandoned at its 0.4 s timeout; took {elapsed:.1f}s"
    snap = store.snapshot(run_id)
    assert snap.run.error == "step slow failed: timed out after 0.4s"
    attempts = step_row(snap, "slow").attempts
    assert [(a.number, a.state, a.error) for a in attempts] == [
        (1, "failed", "timed out after 0.4s"), (2, "failed", "timed out after 0.4s"),
    ]
    for a in attempts:
        assert 0.35 <= (a.finished_at - a.started_at).total_seconds() < 1.5
    assert [e["data"]["error"] for e in of_type(events, "step_retrying", "slow")] == ["timed out after 0.4s"]
    assert "failed: step slow failed: timed out after 0.4s" in " ".join(done.stderr.split())


def test_an_async_step_over_its_timeout_is_cancelled_and_its_retry_succeeds(cli, store, tmp_path):
    log = tmp_path / "async.jsonl"
    run_id, _, _ = run_workflow(cli, ref("async_timeout"), f"log={log}")
    snap = store.snapshot(run_id)
    assert snap.run.state == "succeeded" and snap.result() == "answered on attempt 2"
    attempts = step_row(snap, "hang_once").attempts
    assert [(a.state, a.error) for a in attempts] == [("failed", "timed out after 0.4s"), ("succeeded", None)]
    # attempt 1 was cancelled (not left sleeping): it saw CancelledError and never finished
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert records == [{"attempt": 1, "event": "cancelled"}, {"attempt": 2, "event": "finished"}]


def test_a_run_over_its_timeout_fails_with_a_clear_error_and_stops_its_running_step(cli, store):
    began = time.monotonic()
    run_id, events, done = run_workflow(cli, ref("deadline"), expect=EXIT_RUN_FAILED)
    elapsed = time.monotonic() - began
    assert elapsed < 6.0, f"the run's 1 s timeout should stop the 30 s step; took {elapsed:.1f}s"
    snap = store.snapshot(run_id)
    assert snap.run.state == "failed"
    assert snap.run.error == "run timed out after 1s"
    assert 0.9 <= snap.run.executing_s < 3.0
    assert step_row(snap, "quick").state == "succeeded"
    endless = step_row(snap, "endless")
    assert endless.state != "succeeded"
    assert [(a.state, a.error) for a in endless.attempts] == [("abandoned", "run timed out after 1s")]
    assert of_type(events, "run_failed")[0]["data"]["error"] == "run timed out after 1s"
    assert "failed: run timed out after 1s" in " ".join(done.stderr.split())


# -- when retries run out ---------------------------------------------------------------------------


def test_an_optional_step_that_fails_gives_its_dependents_none_and_the_run_succeeds(cli, store):
    run_id, events, _ = run_workflow(cli, ref("optional"))
    snap = store.snapshot(run_id)
    assert snap.run.state == "succeeded" and snap.run.error is None
    assert snap.result() == {"base": 7, "enrich": None}
    enrich = step_row(snap, "enrich")
    assert enrich.state == "failed"
    assert [(a.state, a.error) for a in enrich.attempts] == [
        ("failed", "RuntimeError: enrichment service down (attempt 1)"),
        ("failed", "RuntimeError: enrichment service down (attempt 2)"),
    ]
    failed = of_type(events, "step_failed", "enrich")
    assert len(failed) == 1 and failed[0]["data"]["optional"] is True
    assert step_row(snap, "report").state == "succeeded"


def test_on_exhausted_pause_rests_the_run_paused_and_resume_retries_the_failed_step(cli, store):
    run_id, events, done = run_workflow(cli, ref("gated"))  # a paused run exits 0
    assert f"paused; continue with: statepipe resume {run_id}" in " ".join(done.stderr.split())
    paused = store.snapshot(run_id)
    assert paused.run.state == "paused"
    assert paused.run.owner is None and paused.run.requested is None  # at rest, no process needed
    fragile = step_row(paused, "fragile")
    assert fragile.state == "failed"
    assert [(a.number, a.state) for a in fragile.attempts] == [(1, "failed"), (2, "failed")]
    assert step_row(paused, "finish").state == "pending"
    assert step_row(paused, "prepare").state == "succeeded"
    assert events[-1]["type"] == "run_paused"

    resumed = cli("resume", run_id)
    assert resumed.returncode == 0, resumed.stderr
    after = store.snapshot(run_id)
    assert after.run.state == "succeeded"
    assert after.result() == "FRAGILE OK ON ATTEMPT 3"
    fragile = step_row(after, "fragile")
    assert [(a.number, a.state) for a in fragile.attempts] == [(1, "failed"), (2, "failed"), (3, "succeeded")]
    resume_events = parse_events(resumed.stdout)
    assert of_type(resume_events, "step_reset", "fragile")
    assert not of_type(resume_events, "step_started", "prepare")  # completed steps are not re-run
    assert len(step_row(after, "prepare").attempts) == 1


# -- hooks ------------------------------------------------------------------------------------------


def test_hooks_are_called_and_a_failing_hook_is_an_event_while_the_run_succeeds(cli, store, tmp_path):
    hook_log = tmp_path / "hooks.jsonl"
    run_id, events, _ = run_workflow(cli, ref("hooked"), f"hook_log={hook_log}")
    calls = [json.loads(line) for line in hook_log.read_text().splitlines()]
    assert all(c["run_id"] == run_id and c["workflow"] == "hooked" for c in calls)
    by_hook: dict[str, list[dict[str, Any]]] = {}
    for c in calls:
        by_hook.setdefault(c["hook"], []).append(c["meta"])

    assert calls[0]["hook"] == "on_init" and by_hook["on_init"] == [{"resumed": False}]
    assert {"step": "first", "item": None, "message": "halfway"}.items() <= by_hook["on_progress"][0].items()
    retries = {m["step"]: m for m in by_hook["on_retry"]}
    assert retries["second"]["attempt"] == 1
    assert retries["second"]["error"] == "ConnectionError: second: transient failure"
    assert retries["second"]["delay_s"] == 0.05
    assert [(m["step"], m["error"]) for m in by_hook["on_error"]] == [("extra", "RuntimeError: extra always fails")]
    assert len(by_hook["on_success"]) == 1
    assert calls[-1]["hook"] == "on_complete"
    assert by_hook["on_complete"][0]["state"] == "succeeded" and by_hook["on_complete"][0]["error"] is None

    snap = store.snapshot(run_id)
    assert snap.run.state == "succeeded"
    assert snap.result() == {"second": 2, "extra": None}
    failed_hooks = [e for e in stored_events(store, run_id) if e.type == "hook_failed"]
    assert [(e.data["hook"], e.data["error"]) for e in failed_hooks] == [
        ("on_success", "RuntimeError: bug in the on_success hook")
    ]
    # the hook's failure is recorded after the run's end and changes nothing about it
    types = [e.type for e in stored_events(store, run_id)]
    assert types.index("run_succeeded") < types.index("hook_failed")
    assert [e.type for e in stored_events(store, run_id)].count("run_succeeded") == 1
    assert store.get_run(run_id).state == "succeeded"


def test_an_async_on_progress_hook_is_awaited_for_every_report_before_the_run_ends(cli, store, tmp_path):
    """Progress is reported from the step's thread; an async hook runs on the engine's loop (it
    was called and its coroutine dropped), its failure reported as any hook's is."""
    log, flow = tmp_path / "progress.txt", tmp_path / "async_progress.py"
    flow.write_text(
        "import asyncio\n"
        "from statepipe import Workflow\n"
        "async def seen(ctx, meta):\n"
        "    await asyncio.sleep(0.05)\n"
        "    if meta['message'] == 'boom':\n"
        "        raise RuntimeError('the hook broke')\n"
        "    with open(ctx.input['log'], 'a') as f:\n"
        "        f.write(meta['message'] + '\\n')\n"
        "wf = Workflow('async_progress', extra_inputs=True, on_progress=seen)\n"
        "@wf.step\n"
        "def work(ctx) -> int:\n"
        "    for message in ('one', 'two', 'boom'):\n"
        "        ctx.progress(message)\n"
        "    return 1\n"
    )
    run_id, _, done = run_workflow(cli, str(flow), f"log={log}")
    assert done.returncode == 0 and "never awaited" not in done.stderr, done.stderr
    assert sorted(log.read_text().split()) == ["one", "two"]
    failed = [e.data for e in stored_events(store, run_id) if e.type == "hook_failed"]
    assert failed == [{"hook": "on_progress", "error": "RuntimeError: the hook broke"}]
