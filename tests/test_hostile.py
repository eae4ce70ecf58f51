"""Hostile input and crash loops (issue 22): nothing a step or a user sends leaves a run stuck,
loops a process, or prints a traceback. Each test is one finding of the issue, through the real
CLI, a real PostgreSQL and real processes.

The rule for text PostgreSQL cannot store is store/storable.py's: data (input, outputs, partial
objects) holding it is refused, messages (errors, progress, emitted text) have it replaced."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import error_message, workflow_path

HOSTILE = workflow_path("hostile")
SUICIDAL = workflow_path("suicidal")
ECHO = workflow_path("echo")


def _inspect(cli: Any, run_id: str) -> dict[str, Any]:
    return cli.json("inspect", run_id, "--json")


def _run_id(done: subprocess.CompletedProcess[str]) -> str:
    first = json.loads(done.stdout.splitlines()[0])
    return str(first["run_id"])


def _events(cli: Any, run_id: str) -> list[dict[str, Any]]:
    done = cli("logs", run_id)
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def _attempts(doc: dict[str, Any], step: str) -> list[tuple[str, str | None]]:
    row = next(s for s in doc["steps"] if s["name"] == step and s["item"] is None)
    return [(a["state"], a["error"]) for a in row["attempts"]]


# -- 1. text PostgreSQL cannot store, from a step -----------------------------------------------


def test_an_output_holding_a_lone_surrogate_fails_its_attempts_naming_the_place_and_the_run_ends(cli):
    done = cli("run", HOSTILE, "-i", "field=output", "-i", "kind=surrogate")
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    doc = _inspect(cli, _run_id(done))
    assert doc["run"]["state"] == "failed"
    expected = (
        "step produce: output['t'] holds a lone surrogate (\\udce9) at character 3, which PostgreSQL cannot store; "
        "decode bytes with errors='replace', or pass them as base64"
    )
    assert _attempts(doc, "produce") == [("failed", expected), ("failed", expected)]  # retried per its policy


def test_an_exception_message_holding_a_lone_surrogate_is_stored_with_the_character_replaced(cli):
    done = cli("run", HOSTILE, "-i", "field=error", "-i", "kind=surrogate")
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    doc = _inspect(cli, _run_id(done))
    assert doc["run"]["state"] == "failed"
    assert [e for _, e in _attempts(doc, "produce")] == ["ValueError: caf\ufffd menu"] * 2


@pytest.mark.parametrize("field", ["progress", "emit"])
def test_progress_and_emitted_text_holding_a_lone_surrogate_are_kept_with_the_character_replaced(cli, field):
    done = cli("run", HOSTILE, "-i", f"field={field}", "-i", "kind=surrogate")
    assert done.returncode == 0, done.stderr
    events = [json.loads(line) for line in done.stdout.splitlines()]
    kind = {"progress": "progress", "emit": "output"}[field]
    texts = [e["data"].get("message", e["data"].get("text")) for e in events if e["type"] == kind]
    assert texts == ["caf\ufffd menu"]
    assert events[-1]["type"] == "run_succeeded"


def test_a_partial_object_holding_a_nul_is_refused_in_the_step(cli):
    done = cli("run", HOSTILE, "-i", "field=partial", "-i", "kind=nul")
    assert done.returncode == 1, done.stderr
    doc = _inspect(cli, _run_id(done))
    assert _attempts(doc, "produce")[0] == (
        "failed", "step produce: partial value['t'] holds a NUL character (\\x00) at character 1, which PostgreSQL cannot store"
    )


def test_an_emoji_returned_as_two_surrogate_halves_is_stored_as_the_emoji(cli):
    done = cli("run", HOSTILE, "-i", "field=output", "-i", "kind=halves")
    assert done.returncode == 0, done.stderr
    doc = _inspect(cli, _run_id(done))
    assert doc["run"]["result"] == "after"
    produce = next(s for s in doc["steps"] if s["name"] == "produce")
    assert produce["output"] == {"t": "smile \U0001f600"}


# -- 2. a worker given such runs does not loop ---------------------------------------------------


def test_a_worker_given_runs_whose_steps_produce_unstorable_text_ends_each_within_its_retries(cli, spawn):
    ids = []
    for field in ("output", "error", "progress", "partial"):
        done = cli("run", HOSTILE, "--detach", "-i", f"field={field}", "-i", "kind=surrogate")
        assert done.returncode == 0, done.stderr
        ids.append(done.stdout.strip().split()[-1])
    worker = cli("worker", "--until-idle", timeout=60)
    assert worker.returncode == 0 and "Traceback" not in worker.stderr, worker.stderr
    states = {}
    for run_id in ids:
        doc = _inspect(cli, run_id)
        states[run_id] = doc["run"]["state"]
        assert len(_attempts(doc, "produce")) <= 2  # its policy's two attempts, never more
        assert sum(1 for e in _events(cli, run_id) if e["type"] == "run_resumed") == 0
    assert sorted(states.values()) == ["failed", "failed", "failed", "succeeded"]


# -- 3. a step that kills its process ------------------------------------------------------------


def test_a_step_that_kills_its_process_every_time_fails_after_max_abandoned_and_rerun_tries_again(cli, tmp_path):
    first = cli("run", SUICIDAL)
    assert first.returncode != 0
    run_id = _run_id(first)
    exits = []
    for _ in range(6):  # resume until it stops
        done = cli("resume", run_id)
        exits.append(done.returncode)
        if done.returncode == 1:
            break
    assert exits == [9, 9, 1]  # suicidal.py: max_abandoned=3
    doc = _inspect(cli, run_id)
    assert doc["run"]["state"] == "failed"
    boom = _attempts(doc, "boom")
    assert [state for state, _ in boom] == ["abandoned", "abandoned", "abandoned"]
    assert all(error.startswith("the process running it died (pid ") for _, error in boom)
    step = next(s for s in doc["steps"] if s["name"] == "boom")
    assert step["error"].startswith("abandoned 3 times in a row: the process running it died each time (last: pid ")
    assert step["error"].endswith("fix the cause, then statepipe rerun --from boom")
    assert next(s for s in doc["steps"] if s["name"] == "before")["attempts"][0]["state"] == "succeeded"

    fixed = cli("rerun", run_id, "--from", "boom", "--set", "die=false")
    assert fixed.returncode == 0, fixed.stderr
    doc = _inspect(cli, run_id)
    assert doc["run"]["state"] == "succeeded"
    assert doc["run"]["result"] == "before and boom and after"
    assert len(next(s for s in doc["steps"] if s["name"] == "before")["attempts"]) == 1  # never executed again


def test_a_step_abandoned_twice_in_a_row_waits_its_backoff_before_running_again(cli):
    run_id = _run_id(cli("run", SUICIDAL))
    cli("resume", run_id)  # the second death
    cli("resume", run_id)
    events = _events(cli, run_id)
    kinds = [(e["type"], e["data"].get("abandoned_in_row")) for e in events if e["step"] == "boom"]
    # the first death is taken up at once, the second waits the step's backoff, the third fails it
    assert kinds == [
        ("step_started", None), ("attempt_abandoned", 1), ("step_started", None),
        ("attempt_abandoned", 2), ("step_retrying", None), ("step_started", None),
    ]


def _kill_mid_seed(proc: Any) -> str:
    """kill -9 a piped `run` or `resume` of crashy once its first step has begun; its run's id."""
    for line in proc.stdout:
        event = json.loads(line)
        if event["type"] == "step_started" and event["step"] == "seed":
            time.sleep(0.3)  # a quarter into the step's second
            proc.kill()
            proc.wait()
            return str(event["run_id"])
    raise AssertionError(f"seed never started: {proc.stderr.read()}")


def test_killing_a_run_twice_in_a_row_does_not_fail_it(cli, spawn):
    run_id = _kill_mid_seed(spawn("run", workflow_path("crashy"), "-i", "pause=1", "-i", "items=1"))
    _kill_mid_seed(spawn("resume", run_id))
    done = cli("resume", run_id, timeout=120)
    assert done.returncode == 0, done.stderr
    doc = _inspect(cli, run_id)
    assert doc["run"]["state"] == "succeeded"
    assert [state for state, _ in _attempts(doc, "seed")] == ["abandoned", "abandoned", "succeeded"]


# -- 4-6. input files ----------------------------------------------------------------------------


def test_an_input_file_that_is_not_utf8_is_refused_naming_the_byte_offset(cli, tmp_path: Path):
    path = tmp_path / "latin1.json"
    path.write_bytes(b'{"x": "caf\xe9"}')
    done = cli("run", ECHO, "-f", str(path))
    assert done.returncode == 2
    assert error_message(done) == (
        f"input file {path} is not UTF-8: byte 0xe9 at offset 10 (invalid continuation byte); save it as UTF-8"
    )
    assert cli.json("list", "--json") == []


def test_an_input_file_with_an_escaped_lone_surrogate_is_refused_in_one_line(cli, tmp_path: Path):
    path = tmp_path / "surrogate.json"
    path.write_text('{"x": "\\ud800"}')
    done = cli("run", ECHO, "-f", str(path))
    assert done.returncode == 2
    assert error_message(done).startswith("cannot create the run: input['x'] holds a lone surrogate (\\ud800) at character 0")
    assert cli.json("list", "--json") == []


def test_an_input_nested_500_levels_is_stored_and_returned_unchanged(cli, tmp_path: Path):
    path = tmp_path / "deep.json"
    path.write_text('{"x": ' + "[" * 500 + "]" * 500 + "}")
    done = cli("run", ECHO, "-f", str(path))
    assert done.returncode == 0, done.stderr
    doc = _inspect(cli, _run_id(done))
    assert doc["run"]["input"] == json.loads(path.read_text())
    assert doc["run"]["result"] == json.loads(path.read_text())


@pytest.mark.parametrize("levels", [600, 100_000])
def test_an_input_nested_past_the_limit_is_refused_naming_it(cli, tmp_path: Path, levels: int):
    path = tmp_path / "deeper.json"
    path.write_text('{"x": ' + "[" * levels + "]" * levels + "}")
    done = cli("run", ECHO, "-f", str(path))
    assert done.returncode == 2
    assert "512 levels" in error_message(done)
    assert cli.json("list", "--json") == []


def test_integers_past_64_bits_are_stored_faithfully_and_nan_is_refused(cli, tmp_path: Path):
    big = 2**80 + 1
    done = cli("run", ECHO, "-i", f"n={big}")
    assert done.returncode == 0, done.stderr
    assert _inspect(cli, _run_id(done))["run"]["result"] == {"n": big}
    path = tmp_path / "nan.json"
    path.write_text('{"n": NaN}')
    refused = cli("run", ECHO, "-f", str(path))
    assert refused.returncode == 2
    assert error_message(refused) == "cannot create the run: input holds NaN or infinity, which JSON has no value for; use null or a string"
