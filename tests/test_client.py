"""The Python client (issue 20, part 1): statepipe.Client and AsyncClient start, await, stream,
steer and inspect runs against a real PostgreSQL, and read the same documents the CLI prints
(`logs`, `inspect --json`, `list --json`), since the CLI reads through the same functions."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO, EventReader, cli_env, is_event, workflow_path

import statepipe
from statepipe import AsyncClient, Client, RunCancelled, RunFailed, Workflow
from statepipe.errors import InputError, NotFoundError

ECHO = workflow_path("echo")
CRASHY = workflow_path("crashy")
FAILING = workflow_path("failing")
QUIET = workflow_path("quiet")
FAULTY = workflow_path("faulty")
WAITER = workflow_path("waiter")
GATED = workflow_path("gated")

adder = Workflow("adder")


@adder.step
def plus_one(x: int) -> int:
    return x + 1


@adder.step
async def doubled(plus_one: int) -> int:
    return plus_one * 2


@pytest.fixture
def client(db_url: str, output_dir: Path) -> Iterator[Client]:
    with Client(db_url) as c:
        yield c


def _lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


def _until(predicate: Any, timeout: float = 60.0) -> Any:
    """Poll until `predicate()` is truthy (a deadline against hanging, not a timing assertion)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def _attempts(doc: dict[str, Any]) -> list[tuple[str, str | None, str, list[str]]]:
    """What steering changed in the store: each step's state and its attempts' states."""
    return [(s["name"], s["item"], s["state"], [a["state"] for a in s["attempts"]]) for s in doc["steps"]]


# -- starting and awaiting ----------------------------------------------------------------------


def test_start_executes_the_run_in_this_process_and_result_returns_its_result(client):
    run = client.start(ECHO, {"topic": "durable", "n": 3})
    assert run.result(timeout=60) == {"topic": "durable", "n": 3}
    assert run.state == "succeeded"
    assert client.inspect(run.id)["run"]["owner"] is None  # executed here, released when done


def test_start_detached_only_enqueues_and_a_worker_executes_it(client, cli):
    run = client.start(ECHO, {"k": "v"}, detach=True)
    assert run.state == "pending"  # queued: nobody executes it until a worker claims it
    done = cli("worker", "--until-idle")
    assert done.returncode == 0, done.stderr
    assert run.result(timeout=60) == {"k": "v"}


def test_result_of_a_run_nobody_executes_times_out(client):
    run = client.start(ECHO, {}, detach=True)
    with pytest.raises(TimeoutError, match=run.id):
        run.result(timeout=0.5)


def test_a_bad_input_is_refused_before_the_run_exists(client):
    with pytest.raises(InputError, match="no input 'nope'"):
        client.start(QUIET, {"nope": 1})
    assert client.runs() == []


def test_an_unknown_workflow_is_refused(client):
    with pytest.raises(NotFoundError, match="unknown workflow 'no_such_workflow'"):
        client.start("no_such_workflow")


def test_run_failed_carries_the_failing_step_and_its_error(client):
    run = client.start(FAILING)
    with pytest.raises(RunFailed) as caught:
        run.result(timeout=60)
    failed = caught.value
    assert (failed.run_id, failed.step, failed.item) == (run.id, "explode", None)
    assert failed.error == "RuntimeError: boom after 41"
    assert str(failed) == "step explode failed: RuntimeError: boom after 41" == client.inspect(run.id)["run"]["error"]
    assert "failing.py" in (failed.traceback or "") and "boom after" in (failed.traceback or "")
    assert run.state == "failed"


def test_run_failed_names_the_fan_out_item_that_failed(client):
    run = client.start(FAULTY, {"pause": 0, "items": 3, "fail_at": "fan"})
    with pytest.raises(RunFailed) as caught:
        run.result(timeout=60)
    assert caught.value.step == "fan" and caught.value.item in {"0", "1", "2"}
    assert "fan was asked to fail" in (caught.value.error or "")


def test_get_finds_a_run_by_a_unique_prefix(client):
    run = client.start(ECHO, {})
    run.result(timeout=60)
    assert client.get(run.id[:8]) == run
    with pytest.raises(NotFoundError):
        client.get("ffffffff-0000")


# -- the documents the CLI prints -----------------------------------------------------------------


def test_events_after_n_equal_the_tail_of_logs(client, cli):
    run = client.start(CRASHY, {"pause": 0, "items": 3})
    run.result(timeout=60)
    logged = _lines(cli("logs", run.id).stdout)
    assert list(run.events(follow=False)) == logged
    tail = _lines(cli("logs", run.id, "--after", "7").stdout)
    assert list(run.events(after=7)) == tail == logged[7:]  # following a finished run ends at once


def test_events_followed_live_arrive_in_order_and_end_with_the_run(client):
    run = client.start(CRASHY, {"pause": 0.1, "items": 3})
    seen = list(run.events())  # started before the run ends: its live tail, then the end
    assert [e["seq"] for e in seen] == list(range(1, len(seen) + 1))
    assert seen[-1]["type"] == "run_succeeded"


def test_inspect_equals_inspect_json(client, cli):
    run = client.start(CRASHY, {"pause": 0, "items": 3})
    run.result(timeout=60)
    printed = cli.json("inspect", run.id, "--json")
    assert client.inspect(run.id[:8]) == printed == run.inspect()


def test_runs_equal_list_json(client, cli):
    for n in range(3):
        client.start(ECHO, {"n": n}).result(timeout=60)
    failing = client.start(FAILING)
    with pytest.raises(RunFailed):
        failing.result(timeout=60)
    assert client.runs(limit=10) == cli.json("list", "--json", "--limit", "10")
    assert client.runs(status="failed") == cli.json("list", "--json", "--status", "failed") != []
    assert client.runs(workflow="echo", limit=2) == cli.json("list", "--json", "--workflow", "echo", "--limit", "2")
    assert client.runs(since="1h", status=["succeeded", "failed"]) == cli.json(
        "list", "--json", "--since", "1h", "--status", "succeeded", "--status", "failed")


def test_runs_refuses_an_unknown_state_as_list_does(client):
    with pytest.raises(InputError, match="unknown state 'finished'"):
        client.runs(status="finished")


# -- steering, as the CLI steers --------------------------------------------------------------


def _held(run: Any) -> None:
    """Return once the run's `held` step is running (gated.py)."""
    for e in run.events():
        if e["type"] == "progress" and e["step"] == "held":
            return
    raise AssertionError(f"run {run.id} ended before its held step ran")


def _held_by_the_cli(spawn: Any, gate: Path) -> str:
    """A gated run executed by `statepipe run` in a subprocess, once its held step is running."""
    events = EventReader(spawn("run", GATED, "-i", f"gate={gate}"))
    events.until(is_event("progress", "held"))
    return events.run_id


def _same(changed: dict[str, str], printed: dict[str, str]) -> bool:
    """Two documents of what a command changed, alike but for whose run it was."""
    return {**changed, "run_id": "", "note": ""} == {**printed, "run_id": "", "note": ""}


def test_pause_now_then_resume_change_the_store_as_the_cli_does(client, cli, spawn, tmp_path):
    mine = client.start(GATED, {"gate": str(tmp_path / "mine")})
    _held(mine)
    theirs = _held_by_the_cli(spawn, tmp_path / "theirs")
    paused = mine.pause(now=True)
    [printed] = cli.json("pause", theirs, "--now", "--json")
    assert paused["after"] == "paused" and _same(paused, printed)
    assert mine.state == "paused"
    assert _attempts(mine.inspect()) == _attempts(cli.json("inspect", theirs, "--json"))

    (tmp_path / "mine").touch()
    (tmp_path / "theirs").touch()
    assert mine.resume()["before"] == "paused"
    assert mine.result(timeout=60) == 3
    assert cli("resume", theirs).returncode == 0
    assert _attempts(mine.inspect()) == _attempts(cli.json("inspect", theirs, "--json"))


def test_cancel_changes_the_store_as_the_cli_does_and_result_raises_run_cancelled(client, cli, spawn, tmp_path):
    mine = client.start(GATED, {"gate": str(tmp_path / "mine")})
    _held(mine)
    theirs = _held_by_the_cli(spawn, tmp_path / "theirs")
    cancelled = mine.cancel()
    [printed] = cli.json("cancel", theirs, "--json")
    assert cancelled["after"] == "cancelled" and _same(cancelled, printed)
    with pytest.raises(RunCancelled, match=mine.id):
        mine.result(timeout=60)
    assert _attempts(mine.inspect()) == _attempts(cli.json("inspect", theirs, "--json"))


def test_cancel_of_a_run_nobody_executes_is_carried_out_by_the_client(client):
    run = client.start(ECHO, {}, detach=True)
    assert run.cancel() == {"run_id": run.id, "before": "pending", "after": "cancelled", "note": ""}
    assert run.state == "cancelled"


def test_rerun_changes_the_store_as_the_cli_does(client, cli):
    mine = client.start(CRASHY, {"pause": 0, "items": 3})
    first = mine.result(timeout=60)
    theirs = json.loads(cli("run", CRASHY, "-i", "pause=0", "-i", "items=3").stdout.splitlines()[0])["run_id"]
    changed = mine.rerun("left", reason="left again")
    assert changed["before"] == "succeeded" and changed["plan"]["rerun"] == ["left", "join", "final"]
    assert mine.result(timeout=60) == first
    assert cli("rerun", theirs, "--from", "left").returncode == 0
    assert _attempts(mine.inspect()) == _attempts(cli.json("inspect", theirs, "--json"))
    assert [e["data"]["reason"] for e in mine.events(follow=False) if e["type"] == "rerun"] == ["left again"]


def test_rerun_with_a_new_input_value_reruns_the_steps_that_read_it(client):
    run = client.start(ECHO, {"n": 1})
    run.result(timeout=60)
    run.rerun(set={"n": 2})
    assert run.result(timeout=60) == {"n": 2}


def test_rerun_of_an_unknown_step_is_refused_and_changes_nothing(client):
    run = client.start(ECHO, {})
    run.result(timeout=60)
    before = run.inspect()
    with pytest.raises(InputError, match="no step 'nope'"):
        run.rerun("nope")
    assert run.inspect() == before


def test_feedback_with_named_steps_reruns_them_as_the_cli_does(client, cli):
    mine = client.start(CRASHY, {"pause": 0, "items": 2})
    mine.result(timeout=60)
    theirs = json.loads(cli("run", CRASHY, "-i", "pause=0", "-i", "items=2").stdout.splitlines()[0])["run_id"]
    doc = mine.feedback("the right branch is wrong", steps=["right"])
    assert doc["applied"] is True and doc["plan"]["rerun"] == ["right", "join", "final"]
    mine.result(timeout=60)
    assert cli("feedback", theirs, "the right branch is wrong", "--steps", "right", "-y").returncode == 0
    assert _attempts(mine.inspect()) == _attempts(cli.json("inspect", theirs, "--json"))


def test_resume_of_a_succeeded_run_is_refused(client):
    run = client.start(ECHO, {})
    run.result(timeout=60)
    with pytest.raises(statepipe.StatepipeError, match="already succeeded"):
        run.resume()


def test_send_delivers_a_value_and_the_waiting_run_continues_here(client):
    run = client.start(WAITER)
    _until(lambda: run.state == "waiting")
    with pytest.raises(InputError, match="refused"):
        run.send("answer", {"ok": "not a boolean"})
    assert run.send("answer", {"ok": True, "note": "fine"})["waiting"] == ["ask"]
    assert run.result(timeout=60) == "ok=True note=fine"
    with pytest.raises(statepipe.StatepipeError):
        run.send("answer", {"ok": False})


# -- Workflow objects and wf.run ---------------------------------------------------------------


def test_workflow_run_executes_it_in_process_and_returns_its_result(db_url, output_dir):
    assert adder.run(x=4) == 10
    with Client(db_url) as client:
        [doc] = client.runs()
    assert doc["workflow"] == "adder" and doc["state"] == "succeeded" and doc["result"] == 10
    assert (output_dir / f"{doc['id']}.jsonl").exists()  # its events, as `statepipe run` writes them


def test_workflow_run_raises_run_failed(db_url, output_dir):
    broken = Workflow("broken")

    @broken.step
    def explode() -> int:
        raise ValueError("no good")

    with pytest.raises(RunFailed) as caught:
        broken.run()
    assert caught.value.step == "explode" and caught.value.error == "ValueError: no good"


def test_a_run_of_a_workflow_object_is_resumed_by_a_client_given_that_object(db_url, output_dir):
    with Client(db_url) as first:
        run_id = first.start(adder, {"x": 1}, detach=True).id  # queued; no worker can load it
    with Client(db_url) as stranger, pytest.raises(NotFoundError, match="unknown workflow 'adder'"):
        stranger.get(run_id).resume()
    with Client(db_url, workflows=[adder]) as second:
        run = second.get(run_id)
        run.resume()
        assert run.result(timeout=60) == 4


# -- asyncio ------------------------------------------------------------------------------------


def test_async_client_does_the_same_under_asyncio_run(db_url, output_dir, cli):
    async def main() -> tuple[Any, ...]:
        async with AsyncClient(db_url) as client:
            run = await client.start(CRASHY, {"pause": 0, "items": 3})
            events = [e async for e in run.events()]
            result = await run.result(timeout=60)
            tail = [e async for e in run.events(after=5, follow=False)]
            return run.id, events, tail, result, await run.state(), await client.inspect(run.id), await client.runs()

    run_id, events, tail, result, state, doc, docs = asyncio.run(main())
    logged = _lines(cli("logs", run_id).stdout)
    assert events == logged and tail == logged[5:]
    assert state == "succeeded" and result == doc["run"]["result"]
    assert doc == cli.json("inspect", run_id, "--json")
    assert docs == cli.json("list", "--json")


def test_async_client_executes_runs_on_the_callers_loop(db_url, output_dir):
    loops: list[Any] = []
    looped = Workflow("looped")

    @looped.step
    async def where() -> str:
        loops.append(asyncio.get_running_loop())
        return "here"

    async def main() -> Any:
        async with AsyncClient(db_url) as client:
            run = await client.start(looped)
            assert await run.result(timeout=60) == "here"
            return asyncio.get_running_loop()

    assert loops == [asyncio.run(main())]


def test_async_client_raises_run_failed_and_run_cancelled(db_url, output_dir, tmp_path):
    async def main() -> None:
        async with AsyncClient(db_url) as client:
            failing = await client.start(FAILING)
            with pytest.raises(RunFailed) as caught:
                await failing.result(timeout=60)
            assert caught.value.step == "explode"
            held = await client.start(GATED, {"gate": str(tmp_path / "never")})
            async for e in held.events():
                if e["type"] == "progress":
                    break
            assert (await held.cancel())["after"] == "cancelled"
            with pytest.raises(RunCancelled):
                await held.result(timeout=60)
            queued = await client.start(ECHO, {}, detach=True)
            with pytest.raises(TimeoutError):
                await queued.result(timeout=0.5)

    asyncio.run(main())


# -- a program of its own ---------------------------------------------------------------------


SCRIPT = textwrap.dedent("""
    import json, sys
    from statepipe import Client

    with Client() as client:
        run = client.start(sys.argv[1], {"pause": 0.05, "items": 3})
        for event in run.events():
            print(json.dumps(event), flush=True)
        print(json.dumps({"result": run.result()}), flush=True)
""")


def test_a_client_script_starts_awaits_and_streams_a_run(cli, output_dir):
    done = subprocess.run([sys.executable, "-c", SCRIPT, CRASHY], check=False, cwd=REPO, env=cli_env(), capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    *events, last = _lines(done.stdout)
    run_id = events[0]["run_id"]
    assert events == _lines(cli("logs", run_id).stdout)
    assert last["result"] == cli.json("inspect", run_id, "--json")["run"]["result"]
    assert _lines((output_dir / f"{run_id}.jsonl").read_text()) == events  # the file `run` writes
