"""`statepipe serve`'s REST API (issue 16) through a real server and real HTTP clients: its
documents are the CLI's `--json` documents; its commands change the store as the CLI's do;
bad input gets a JSON `{error, code}` with the status that fits and changes nothing stored; with
a token, nothing is served without it; a state change sent by another site is refused."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import CLI, TEST_WORKFLOWS, Server

NAMED = {"STATEPIPE_WORKFLOWS_PATH": str(TEST_WORKFLOWS)}  # the test workflows, found by name


@pytest.fixture
def api(cli: CLI) -> Iterator[Server]:
    """The server with the test workflows on its path."""
    srv = Server(cli, **NAMED).start()
    yield srv
    srv.stop()


@pytest.fixture
def http(api: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=api.url, timeout=120) as client:
        yield client


def _start(http: httpx.Client, workflow: str, **run_input: Any) -> str:
    response = http.post("/api/runs", json={"workflow": workflow, "input": run_input})
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def _until(http: httpx.Client, run_id: str, done: Callable[[dict[str, Any]], bool], timeout: float = 90) -> dict[str, Any]:
    """The run's inspect document once `done` holds for it."""
    deadline = time.monotonic() + timeout
    while True:
        doc = http.get(f"/api/runs/{run_id}").json()
        if done(doc):
            return doc
        if time.monotonic() > deadline:
            raise AssertionError(f"run {run_id} is still {doc['run']['state']}")
        time.sleep(0.1)


def _state(*states: str) -> Callable[[dict[str, Any]], bool]:
    return lambda doc: doc["run"]["state"] in states


def _step(doc: dict[str, Any], name: str) -> dict[str, Any]:
    return next(s for s in doc["steps"] if s["name"] == name and s["item"] is None)


def _started(step: str) -> Callable[[dict[str, Any]], bool]:
    return lambda doc: doc["run"]["state"] == "running" and _step(doc, step)["state"] == "running"


def _listed(cli: CLI) -> Any:
    return cli.json("list", "--json", "--limit", "1000")


def _refused(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["code"] == code and body["error"] and "Traceback" not in body["error"]
    return dict(body)


# -- documents --------------------------------------------------------------------------------


def test_a_run_started_over_the_api_reads_back_as_inspect_json_prints_it(cli, http):
    response = http.post("/api/runs", json={"workflow": "echo", "input": {"topic": "durable", "n": 3}})
    assert response.status_code == 201
    run_id = response.json()["id"]
    assert response.headers["location"] == f"/api/runs/{run_id}"
    assert response.json()["input"] == {"topic": "durable", "n": 3}
    done = _until(http, run_id, _state("succeeded"))
    assert done == http.get(response.headers["location"]).json() == cli.json("inspect", run_id, "--json")
    assert done["run"]["result"] == {"topic": "durable", "n": 3}


def test_the_run_document_is_the_one_list_json_prints(cli, http):
    run_id = _start(http, "echo", x=1)
    _until(http, run_id, _state("succeeded"))
    assert http.get("/api/runs").json() == _listed(cli)


def test_wait_true_returns_the_finished_run_with_its_result(http):
    response = http.post("/api/runs", params={"wait": "true"}, json={"workflow": "echo", "input": {"x": [1, 2]}})
    assert response.status_code == 200
    assert response.json()["run"]["state"] == "succeeded"
    assert response.json()["run"]["result"] == {"x": [1, 2]}
    assert response.headers["location"] == f"/api/runs/{response.json()['run']['id']}"


def test_prefer_wait_returns_202_with_the_run_when_it_outlasts_the_wait(http):
    response = http.post("/api/runs", headers={"Prefer": "wait=1"}, json={"workflow": "crashy", "input": {"pause": 4, "items": 1}})
    assert response.status_code == 202
    assert response.headers["preference-applied"] == "wait=1"
    assert response.json()["state"] in ("pending", "running")
    http.post(f"/api/runs/{response.json()['id']}/cancel", json={})


def test_workflows_are_listed_as_workflows_json_prints_them(cli, http):
    listed = http.get("/api/workflows").json()
    assert listed == json.loads(cli("workflows", "--json", **NAMED).stdout)
    assert "crashy" in {w["name"] for w in listed}


def test_a_workflow_document_has_its_steps_inputs_and_the_mermaid_graph(cli, http):
    doc = http.get("/api/workflows/crashy").json()
    assert [s["name"] for s in doc["steps"]] == ["seed", "left", "right", "fan", "join", "final"]
    assert set(_step_named(doc, "join")["depends_on"]) == {"fan", "left", "right"}
    assert _step_named(doc, "fan")["map_over"] == "seed"
    assert doc["mermaid"] + "\n" == cli("graph", str(TEST_WORKFLOWS / "crashy.py"), "--mermaid").stdout
    assert {i["name"]: i["required"] for i in doc["inputs"]} == {"items": False, "pause": False}


def _step_named(doc: dict[str, Any], name: str) -> dict[str, Any]:
    return next(s for s in doc["steps"] if s["name"] == name)


def test_list_filters_give_what_list_json_gives_with_the_same_filters(cli, http):
    for n in range(3):
        http.post("/api/runs?wait=true", json={"workflow": "echo", "input": {"n": n}})
    http.post("/api/runs?wait=true", json={"workflow": "crashy", "input": {"pause": 0, "items": 1}})
    assert http.get("/api/runs", params={"workflow": "echo"}).json() == cli.json("list", "--json", "--workflow", "echo")
    assert http.get("/api/runs", params={"status": "succeeded", "limit": 2}).json() == cli.json("list", "--json", "--status", "succeeded", "--limit", "2")
    assert http.get("/api/runs", params={"since": "1h"}).json() == cli.json("list", "--json", "--since", "1h")


def test_cursor_pages_give_every_run_once_in_the_order_of_list(cli, http):
    for n in range(7):
        _start(http, "echo", n=n)
    everything = [r["id"] for r in _listed(cli)]
    pages: list[list[str]] = []
    url: str | None = "/api/runs?limit=3"
    while url is not None:
        response = http.get(url)
        pages.append([r["id"] for r in response.json()])
        link = response.headers.get("link")
        assert (link is None) == ("x-next-cursor" not in response.headers)
        url = link[1:link.index(">")] if link else None
    assert [len(p) for p in pages] == [3, 3, 1]
    assert [run_id for page in pages for run_id in page] == everything


# -- commands ---------------------------------------------------------------------------------


def test_cancel_over_the_api_cancels_a_running_run_as_the_cli_does(cli, http):
    run_id = _start(http, "crashy", pause=2, items=2)
    _until(http, run_id, _started("seed"))
    response = http.post(f"/api/runs/{run_id}/cancel", json={})
    assert response.status_code == 200
    assert response.json()["run_id"] == run_id and response.json()["after"] == "cancelled"
    assert cli.json("inspect", run_id, "--json")["run"]["state"] == "cancelled"


def test_pause_now_then_resume_over_the_api_finishes_the_run(cli, http):
    run_id = _start(http, "crashy", pause=1, items=2)
    _until(http, run_id, _started("seed"))
    paused = http.post(f"/api/runs/{run_id}/pause", json={"now": True})
    assert paused.status_code == 200 and paused.json()["after"] == "paused"
    assert cli.json("inspect", run_id, "--json")["run"]["state"] == "paused"
    resumed = http.post(f"/api/runs/{run_id}/resume", json={})
    assert resumed.json() == {"run_id": run_id, "before": "paused", "after": "running", "note": "queued for a worker"}
    done = _until(http, run_id, _state("succeeded", "failed"))
    assert done["run"]["state"] == "succeeded"
    assert done["run"]["result"] == {"total": 2, "right": "item-0-item-1"}


def test_resume_hands_a_failed_run_to_a_worker_which_runs_its_failed_step_again(http):
    run_id = http.post("/api/runs?wait=true", json={"workflow": "failing", "input": {}}).json()["run"]["id"]
    resumed = http.post(f"/api/runs/{run_id}/resume", json={})
    assert resumed.status_code == 200 and resumed.json()["before"] == "failed"
    again = _until(http, run_id, lambda d: d["run"]["state"] == "failed" and len(_step(d, "explode")["attempts"]) == 2)
    assert len(_step(again, "prepare")["attempts"]) == 1


def test_rerun_from_a_step_runs_it_and_its_descendants_again_and_keeps_the_rest(cli, http):
    run_id = http.post("/api/runs?wait=true", json={"workflow": "crashy", "input": {"pause": 0, "items": 2}}).json()["run"]["id"]
    response = http.post(f"/api/runs/{run_id}/rerun", json={"from": ["join"]})
    assert response.status_code == 200
    assert response.json()["plan"]["rerun"] == ["join", "final"]
    assert response.json()["plan"]["keep"] == ["seed", "left", "right", "fan"]
    done = _until(http, run_id, lambda d: d["run"]["state"] == "succeeded" and len(_step(d, "final")["attempts"]) == 2)
    assert done == cli.json("inspect", run_id, "--json")
    attempts = {s["name"]: len(s["attempts"]) for s in done["steps"] if s["item"] is None}
    assert attempts == {"seed": 1, "left": 1, "right": 1, "fan": 1, "join": 2, "final": 2}
    rerun = [e for e in map(json.loads, cli("logs", run_id).stdout.splitlines()) if e["type"] == "rerun"]
    assert rerun[-1]["data"]["affected"] == ["join", "final"] and rerun[-1]["data"]["reason"] == "rerun --from join"


def test_rerun_from_a_cacheable_step_executes_it_again(cli, tmp_path):
    trace = tmp_path / "trace"
    server = Server(cli, ITER_TRACE=str(trace), **NAMED).start()
    try:
        with httpx.Client(base_url=server.url, timeout=120) as http:
            run_id = http.post("/api/runs?wait=true", json={"workflow": "iter_cache", "input": {"x": 2}}).json()["run"]["id"]
            assert http.post(f"/api/runs/{run_id}/rerun", json={"from": ["base"]}).status_code == 200
            _until(http, run_id, lambda d: d["run"]["state"] == "succeeded" and len(_step(d, "use")["attempts"]) == 2)
    finally:
        server.stop()
    executed = [line.split()[1] for line in trace.read_text().splitlines()]
    assert executed.count("base") == 2 and executed.count("use") == 2


def test_fork_creates_a_new_run_from_the_chosen_step_and_leaves_the_original_alone(cli, http):
    run_id = http.post("/api/runs?wait=true", json={"workflow": "crashy", "input": {"pause": 0, "items": 2}}).json()["run"]["id"]
    before = cli.json("inspect", run_id, "--json")
    response = http.post(f"/api/runs/{run_id}/fork", json={"from": ["final"]})
    assert response.status_code == 201
    fork_id = response.json()["id"]
    assert response.headers["location"] == f"/api/runs/{fork_id}"
    assert response.json()["forked_from"] == run_id
    done = _until(http, fork_id, _state("succeeded", "failed"))
    assert done["run"]["state"] == "succeeded" and done["run"]["result"] == before["run"]["result"]
    assert [len(s["attempts"]) for s in done["steps"] if s["name"] == "final"] == [1]
    after = cli.json("inspect", run_id, "--json")
    assert after == {**before, "forks": [fork_id]}


def test_feedback_returns_its_plan_and_changes_nothing_until_applied(cli, http):
    run_id = http.post("/api/runs?wait=true", json={"workflow": "crashy", "input": {"pause": 0, "items": 2}}).json()["run"]["id"]
    before = cli.json("inspect", run_id, "--json")
    shown = http.post(f"/api/runs/{run_id}/feedback", json={"text": "the total is off", "steps": ["final"]})
    assert shown.status_code == 200
    assert shown.json()["applied"] is False and shown.json()["plan"]["rerun"] == ["final"]
    assert shown.json()["routing"]["steps"] == [{"name": "final", "guidance": "the total is off"}]
    assert cli.json("inspect", run_id, "--json") == before
    applied = http.post(f"/api/runs/{run_id}/feedback", json={"text": "the total is off", "steps": ["final"], "apply": True})
    assert applied.json()["applied"] is True and applied.json()["after"] == "running"
    _until(http, run_id, lambda d: d["run"]["state"] == "succeeded" and len(_step(d, "final")["attempts"]) == 2)
    rerun = [e for e in map(json.loads, cli("logs", run_id).stdout.splitlines()) if e["type"] == "rerun"]
    assert rerun[-1]["data"]["feedback"] == {"final": "the total is off"} and rerun[-1]["data"]["classifier"] == "--steps"


# -- bad input: the right status, a JSON error, nothing stored changed --------------------------


@pytest.fixture
def unchanged(cli: CLI, http: httpx.Client) -> Iterator[None]:
    """A finished run in the store, and the store's runs the same after the test as before it."""
    http.post("/api/runs?wait=true", json={"workflow": "echo", "input": {"x": 1}})
    before = _listed(cli)
    yield
    assert _listed(cli) == before


def test_an_unknown_run_id_is_404(http, unchanged):
    _refused(http.get("/api/runs/0123abcd"), 404, "not_found")
    _refused(http.post("/api/runs/0123abcd/cancel", json={}), 404, "not_found")


def test_a_malformed_run_id_is_404(http, unchanged):
    _refused(http.get("/api/runs/not-a-run!"), 404, "not_found")
    _refused(http.post("/api/runs/x%27%3B--/rerun", json={"from": ["echo"]}), 404, "not_found")


def test_a_malformed_json_body_is_422(http, unchanged):
    response = http.post("/api/runs", content=b'{"workflow": "echo", "input": {', headers={"Content-Type": "application/json"})
    _refused(response, 422, "invalid_request")


def test_a_body_with_a_misspelt_field_is_422(http, unchanged):
    _refused(http.post("/api/runs", json={"workflow": "echo", "inputs": {"x": 1}}), 422, "invalid_request")


def test_an_unknown_workflow_is_404(http, unchanged):
    _refused(http.post("/api/runs", json={"workflow": "no_such_workflow", "input": {}}), 404, "not_found")
    _refused(http.get("/api/workflows/no_such_workflow"), 404, "not_found")


def test_a_workflow_path_sent_over_http_is_never_imported(http, unchanged, tmp_path: Path):
    marker = tmp_path / "imported"
    evil = tmp_path / "evil.py"
    evil.write_text(f"open({str(marker)!r}, 'w').write('ran')\nfrom statepipe import Workflow\nwf = Workflow('evil')\n")
    for name in (str(evil), f"{evil}:wf", str(tmp_path / "evil"), "../" * 8 + str(tmp_path / "evil")):
        _refused(http.post("/api/runs", json={"workflow": name, "input": {}}), 404, "not_found")
    assert not marker.exists()


def test_input_failing_the_workflows_checks_is_422_as_on_the_command_line(cli, http, unchanged):
    typo = _refused(http.post("/api/runs", json={"workflow": "crashy", "input": {"itemz": 3}}), 422, "input")
    assert typo["error"] == "workflow crashy has no input 'itemz' (did you mean 'items'?); its inputs: items, pause"
    nan = http.post("/api/runs", content=b'{"workflow": "crashy", "input": {"pause": NaN}}', headers={"Content-Type": "application/json"})
    _refused(nan, 422, "input")
    lone = http.post("/api/runs", content=b'{"workflow": "echo", "input": {"x": "\\ud800"}}', headers={"Content-Type": "application/json"})
    assert "surrogate" in _refused(lone, 422, "input")["error"]


def test_a_rerun_of_an_unknown_step_is_422(http, unchanged):
    run_id = http.get("/api/runs").json()[0]["id"]
    refused = _refused(http.post(f"/api/runs/{run_id}/rerun", json={"from": ["nope"]}), 422, "input")
    assert refused["error"] == "workflow echo has no step 'nope'; steps: echo"


def test_resuming_a_finished_run_is_409(http, unchanged):
    run_id = http.get("/api/runs").json()[0]["id"]
    _refused(http.post(f"/api/runs/{run_id}/resume", json={}), 409, "conflict")


def test_a_cursor_not_made_by_the_server_is_422(http, unchanged):
    _refused(http.get("/api/runs", params={"cursor": "bm90IGEgY3Vyc29y"}), 422, "input")


# -- security ---------------------------------------------------------------------------------


@pytest.fixture
def guarded(cli: CLI) -> Iterator[Server]:
    srv = Server(cli, "--token", "s3cret", **NAMED).start()
    yield srv
    srv.stop()


def test_without_the_token_every_route_is_401_and_nothing_is_stored(cli, guarded):
    before = _listed(cli)
    with httpx.Client(base_url=guarded.url, timeout=60) as http:
        for response in (
            http.get("/api/runs"),
            http.get("/api/workflows"),
            http.get("/openapi.json"),
            http.post("/api/runs", json={"workflow": "echo", "input": {}}),
            http.post("/api/runs", json={"workflow": "echo", "input": {}}, headers={"Authorization": "Bearer wrong"}),
            http.get("/api/runs", headers={"Authorization": "Bearer s3cret-but-longer"}),
        ):
            _refused(response, 401, "unauthorized")
            assert response.headers["www-authenticate"] == "Bearer"
        http.cookies.set("statepipe_session", "forged")
        _refused(http.get("/api/runs"), 401, "unauthorized")
    assert _listed(cli) == before


def test_with_the_token_the_api_answers(guarded):
    with httpx.Client(base_url=guarded.url, timeout=60, headers={"Authorization": "Bearer s3cret"}) as http:
        response = http.post("/api/runs?wait=true", json={"workflow": "echo", "input": {"x": 1}})
        assert response.status_code == 200 and response.json()["run"]["result"] == {"x": 1}


def test_the_login_form_sets_an_httponly_strict_cookie_that_opens_the_api(guarded):
    with httpx.Client(base_url=guarded.url, timeout=60) as http:
        assert http.get("/api/runs", headers={"Accept": "text/html"}).status_code == 401  # the API never redirects
        for path in ("/", "/docs"):
            page = http.get(path, headers={"Accept": "text/html"})
            assert page.status_code == 303 and page.headers["location"] == f"/login?next={path.replace('/', '%2F')}"
        assert 'name="token"' in http.get("/login").text
        wrong = http.post("/login", data={"token": "nope", "next": "/"})
        assert wrong.status_code == 401 and "set-cookie" not in wrong.headers
        right = http.post("/login", data={"token": "s3cret", "next": "//evil.example/"})
        assert right.status_code == 303 and right.headers["location"] == "/"
        cookie = right.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "s3cret" not in cookie
        assert http.get("/api/runs").status_code == 200  # the client keeps the cookie


def test_a_cross_site_post_is_refused_and_stores_nothing(cli, http, api):
    before = _listed(cli)
    body = {"workflow": "echo", "input": {"x": 1}}
    _refused(http.post("/api/runs", json=body, headers={"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"}), 403, "cross_site")
    _refused(http.post("/api/runs", json=body, headers={"Origin": "https://evil.example"}), 403, "cross_site")
    _refused(http.post("/api/runs", json=body, headers={"Sec-Fetch-Site": "cross-site"}), 403, "cross_site")
    form = http.post("/api/runs", content=json.dumps(body), headers={"Content-Type": "text/plain"})  # what a form can send
    _refused(form, 415, "unsupported_media_type")
    assert _listed(cli) == before
    same = http.post("/api/runs", json=body, headers={"Origin": api.url, "Sec-Fetch-Site": "same-origin"})
    assert same.status_code == 201


def test_without_a_token_only_requests_addressed_to_localhost_are_answered(http):
    _refused(http.get("/api/runs", headers={"Host": "rebound.example:8765"}), 403, "forbidden_host")
    assert http.get("/api/runs", headers={"Host": "localhost"}).status_code == 200


def test_every_api_route_is_documented_with_a_summary_and_its_documents(cli, http):
    schema = http.get("/openapi.json").json()
    routes = {(path, method) for path, methods in schema["paths"].items() if path.startswith("/api/") for method in methods}
    assert {("/api/runs", "post"), ("/api/runs", "get"), ("/api/runs/{run_id}", "get"), ("/api/runs/{run_id}/rerun", "post"),
            ("/api/workflows/{name}", "get")} <= routes
    assert all(schema["paths"][p][m].get("summary") for p, m in routes)
    run_id = _start(http, "echo", x=1)
    documented = set(schema["components"]["schemas"]["RunDocument"]["properties"])
    assert documented == set(http.get(f"/api/runs/{run_id}").json()["run"])
    assert "from" in schema["components"]["schemas"]["RerunRun"]["properties"]
