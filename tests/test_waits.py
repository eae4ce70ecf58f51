"""Durable waits for a person's input (issue 20): ctx.wait_for stops the step, the run rests
`waiting` with no owner, and `statepipe send` delivers a value, checked, kept with an event and
used exactly once. Through the real CLI, real workers and real PostgreSQL."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Any

from conftest import error_message, workflow_path
from test_faults import wait_for

WAITER = workflow_path("waiter")


def _doc(cli: Any, run_id: str) -> dict[str, Any]:
    return cli.json("inspect", run_id, "--json")


def _step(doc: dict[str, Any], name: str) -> dict[str, Any]:
    return next(s for s in doc["steps"] if s["name"] == name)


def test_a_step_waiting_for_input_leaves_the_run_waiting_with_no_owner_and_says_how_to_answer(cli):
    done = cli("run", WAITER)
    assert done.returncode == 0, done.stderr
    run_id = json.loads(done.stdout.splitlines()[0])["run_id"]
    assert "waiting: ask asks for 'answer'" in done.stderr
    assert done.stderr.strip().splitlines()[-1] == f"send it with: statepipe send {run_id[:8]} answer -i ok=... -i note=..."
    doc = _doc(cli, run_id)
    assert doc["run"]["state"] == "waiting" and doc["run"]["owner"] is None
    ask = _step(doc, "ask")
    assert ask["state"] == "waiting" and ask["waiting_for"]["name"] == "answer"
    assert ask["waiting_for"]["schema"]["properties"]["ok"]["type"] == "boolean"
    assert [r["id"] for r in cli.json("list", "--json", "--status", "waiting")] == [run_id]


def test_send_delivers_the_value_and_the_run_continues_each_step_succeeding_once(cli, tmp_path: Path):
    log = tmp_path / "ran.log"
    run_id = json.loads(cli("run", WAITER, "-i", f"log={log}").stdout.splitlines()[0])["run_id"]
    done = cli("send", run_id, "answer", "-i", "ok=true", "-i", "note=fine")
    assert done.returncode == 0, done.stderr
    doc = _doc(cli, run_id)
    assert doc["run"]["state"] == "succeeded" and doc["run"]["result"] == "ok=True note=fine"
    assert [a["state"] for a in _step(doc, "ask")["attempts"]] == ["suspended", "succeeded"]
    assert log.read_text().split() == ["before", "ask", "ask", "after"]  # the waiting step runs again, once
    sent = [json.loads(line) for line in cli("logs", run_id).stdout.splitlines() if '"input_sent"' in line]
    assert [e["data"] for e in sent] == [{"name": "answer", "value": {"ok": True, "note": "fine"}}]


def test_a_value_sent_before_the_step_asks_is_kept_for_it(cli):
    run_id = cli("run", WAITER, "--detach").stdout.strip().split()[-1]
    early = cli("send", run_id, "answer", "-i", "ok=false", "--detach")
    assert early.returncode == 0, early.stderr
    assert "kept: no step waits for it yet" in early.stderr
    worker = cli("worker", "--until-idle", timeout=60)
    assert worker.returncode == 0, worker.stderr
    doc = _doc(cli, run_id)
    assert doc["run"]["state"] == "succeeded" and doc["run"]["result"] == "ok=False note="
    assert [a["state"] for a in _step(doc, "ask")["attempts"]] == ["succeeded"]  # it never had to wait


def test_a_value_the_schema_refuses_changes_nothing(cli):
    run_id = json.loads(cli("run", WAITER).stdout.splitlines()[0])["run_id"]
    before = cli("logs", run_id).stdout
    bad = cli("send", run_id, "answer", "-i", "ok=perhaps")
    assert bad.returncode == 2
    assert error_message(bad) == "value for 'answer' refused at ok: 'perhaps' is not of type 'boolean'"
    assert cli("logs", run_id).stdout == before
    assert _doc(cli, run_id)["run"]["state"] == "waiting"


def test_a_second_value_for_the_same_name_is_refused_as_already_delivered(cli):
    run_id = json.loads(cli("run", WAITER).stdout.splitlines()[0])["run_id"]
    assert cli("send", run_id, "answer", "-i", "ok=true", "--detach").returncode == 0
    again = cli("send", run_id, "answer", "-i", "ok=false", "--detach")
    assert again.returncode == 4
    assert "already has a value for 'answer'" in error_message(again)


def test_a_waiting_run_survives_a_killed_worker_and_a_new_worker_completes_it_after_send(cli, spawn, tmp_path: Path):
    log = tmp_path / "ran.log"
    run_id = cli("run", WAITER, "--detach", "-i", f"log={log}").stdout.strip().split()[-1]
    worker = spawn("worker")
    wait_for(lambda: _doc(cli, run_id)["run"]["state"] == "waiting", 60, "the run to reach that state", 0.2)
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    assert _doc(cli, run_id)["run"]["state"] == "waiting"  # nothing held it: nothing was lost
    assert cli("send", run_id, "answer", "-i", "ok=true", "--detach").returncode == 0
    again = spawn("worker")
    wait_for(lambda: _doc(cli, run_id)["run"]["state"] == "succeeded", 60, "the run to reach that state", 0.2)
    again.send_signal(signal.SIGTERM)
    again.wait(timeout=30)
    doc = _doc(cli, run_id)
    for name in ("before", "ask", "after"):
        assert [a["state"] for a in _step(doc, name)["attempts"]].count("succeeded") == 1
    assert log.read_text().split() == ["before", "ask", "ask", "after"]


def test_a_wait_past_its_timeout_fails_the_step_when_a_worker_wakes_it(cli):
    run_id = cli("run", WAITER, "--detach", "-i", "timeout=1").stdout.strip().split()[-1]
    first = cli("worker", "--until-idle", timeout=60)  # runs it to the wait
    assert first.returncode == 0, first.stderr
    assert _doc(cli, run_id)["run"]["state"] == "waiting"
    time.sleep(1.5)  # the deadline passes; the run is claimable again
    second = cli("worker", "--until-idle", timeout=60)
    assert second.returncode == 0, second.stderr
    doc = _doc(cli, run_id)
    assert doc["run"]["state"] == "failed"
    assert _step(doc, "ask")["error"] == "no value for 'answer' came within 1s"


def test_cancel_of_a_waiting_run_cancels_it(cli):
    run_id = json.loads(cli("run", WAITER).stdout.splitlines()[0])["run_id"]
    done = cli("cancel", run_id)
    assert done.returncode == 0, done.stderr
    doc = _doc(cli, run_id)
    assert doc["run"]["state"] == "cancelled"
    assert _step(doc, "ask")["state"] == "cancelled"


def test_the_http_api_delivers_a_value_and_the_servers_worker_continues_the_run(cli, server):
    import httpx

    run_id = cli("run", WAITER, "--detach").stdout.strip().split()[-1]
    wait_for(lambda: _doc(cli, run_id)["run"]["state"] == "waiting", 60, "the run to reach that state", 0.2)
    bad = httpx.post(f"{server.url}/api/runs/{run_id}/signals/answer", json={"value": {"ok": "perhaps"}}, timeout=30)
    assert bad.status_code == 422 and bad.json()["code"] == "input"
    sent = httpx.post(f"{server.url}/api/runs/{run_id}/signals/answer", json={"value": {"ok": True, "note": "web"}}, timeout=30)
    assert sent.status_code == 200, sent.text
    assert sent.json()["waiting"] == ["ask"]
    wait_for(lambda: _doc(cli, run_id)["run"]["state"] == "succeeded", 60, "the run to reach that state", 0.2)
    assert _doc(cli, run_id)["run"]["result"] == "ok=True note=web"
