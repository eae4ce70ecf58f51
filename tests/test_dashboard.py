"""The dashboard in a real browser: Debian's chromium driven by Playwright against a real
`statepipe serve` and its worker; runs started with the real CLI (`run --detach`, for the live
list) or, quicker, through the API (POST /api/runs, the test workflows found by name).

Nothing here measures time: a test waits for what the page shows (with a deadline) and then
compares it with what the store holds (`statepipe logs`, `statepipe inspect --json`)."""

from __future__ import annotations

import itertools
import json
import shutil
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
from conftest import CLI, TEMPLATE, TEST_WORKFLOWS, Server, _with_db, workflow_path
from psycopg import sql

from statepipe.store.database import open_store
from statepipe.store.store import Store

Dash = tuple[CLI, Server, Store]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
WAIT_MS = 60_000
MARKUP = '<script>alert(1)</script><img src=x onerror="alert(2)"><b>bold?</b>'  # tests/workflows/streamer.py  # a deadline for what the page must come to show, not a measurement

if not Path(CHROMIUM).exists():
    pytest.skip("chromium is not installed (.ci/run installs Debian's)", allow_module_level=True)


@pytest.fixture(scope="module")
def dash(server_url: str, template_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dash]:
    """One database and one `statepipe serve` for the whole module (as the `server` fixture
    makes them, once: starting a server is most of a short test's time). Each test makes its
    own runs and looks only at them."""
    name = f"sp_dash_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(name), sql.Identifier(TEMPLATE)))
    url = _with_db(server_url, name)
    out = tmp_path_factory.mktemp("dashboard") / "output"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("STATEPIPE_DATABASE_URL", url)
        mp.setenv("STATEPIPE_OUTPUT_DIR", str(out))
        cli = CLI(url, out)
        srv = Server(cli, STATEPIPE_WORKFLOWS_PATH=str(TEST_WORKFLOWS)).start()  # POST /api/runs finds them by name
        # a module's worth of server logs would fill the stderr pipe and stall the server
        assert srv.proc is not None and srv.proc.stderr is not None
        logs: list[str] = []
        threading.Thread(target=lambda f=srv.proc.stderr: logs.extend(f), daemon=True).start()
        store = open_store(url, max_size=4)
        try:
            yield cli, srv, store
        finally:
            store.pool.close()
            srv.stop()
            if logs:
                print("statepipe serve said:", *logs[-40:], sep="\n", file=sys.stderr)
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def cli(dash: Dash) -> CLI:
    return dash[0]


@pytest.fixture
def store(dash: Dash) -> Store:
    return dash[2]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


@dataclass
class Web:
    url: str
    context: Any
    page: Any
    errors: list[str] = field(default_factory=list)
    dialogs: list[tuple[str, str]] = field(default_factory=list)

    def open(self, path: str) -> Any:
        self.page.goto(self.url + path)
        return self.page

    def state(self) -> dict[str, Any]:
        return dict(self.page.evaluate("({...window.__statepipe, seqs: undefined})"))

    def wait(self, expression: str, arg: Any = None, timeout: float = WAIT_MS) -> Any:
        return self.page.wait_for_function(expression, arg=arg, timeout=timeout)


@pytest.fixture
def web(browser: Any, dash: Dash) -> Iterator[Web]:
    context = browser.new_context(viewport={"width": 1200, "height": 800})
    page = context.new_page()
    w = Web(dash[1].url, context, page)
    page.on("pageerror", lambda e: w.errors.append(str(e)))

    def dialog(d: Any) -> None:  # the cancel button asks to confirm; any other dialog is a bug
        w.dialogs.append((d.type, d.message))
        d.accept()

    page.on("dialog", dialog)
    yield w
    context.close()
    assert not w.errors, w.errors


def detach(cli: CLI, workflow: str, *inputs: str) -> str:
    """Enqueue a run for the server's worker; its id."""
    args = [a for i in inputs for a in ("-i", i)]
    done = cli("run", workflow_path(workflow), *args, "--detach")
    assert done.returncode == 0, done.stderr
    return done.stdout.split()[-1]


def start(dash: Dash, workflow: str, wait: bool = True, **run_input: Any) -> str:
    """A run started through the API (quicker than a CLI process): with `wait`, once it ended."""
    import httpx

    r = httpx.post(f"{dash[1].url}/api/runs", params={"wait": "true"} if wait else {},
                   json={"workflow": workflow, "input": run_input}, timeout=120)
    assert r.status_code == (200 if wait else 201), r.text
    return str(r.json()["run"]["id"] if wait else r.json()["id"])


def logged_seqs(cli: CLI, run_id: str) -> list[int]:
    done = cli("logs", run_id)
    assert done.returncode == 0, done.stderr
    return [json.loads(line)["seq"] for line in done.stdout.splitlines()]


def badge(web: Web, selector: str, state: str) -> None:
    web.page.locator(selector).filter(has_text=state).wait_for(timeout=WAIT_MS)


# -- the runs list ------------------------------------------------------------------------------


def test_list_shows_a_run_started_from_the_cli_live(web: Web, cli: CLI) -> None:
    page = web.open("/")
    web.wait("window.__statepipe && window.__statepipe.ready")
    page.evaluate("window.__notReloaded = true")
    run_id = detach(cli, "streamer", "count=4", "delay=0.05")
    row = page.locator(f'tr[data-id="{run_id}"]')
    row.wait_for(timeout=WAIT_MS)
    assert row.locator("td").nth(2).inner_text() == "streamer"
    row.locator(".badge.st-succeeded").wait_for(timeout=WAIT_MS)  # the worker ran it; the row followed
    assert row.locator("td").nth(5).inner_text().strip().endswith("3/3")
    assert page.evaluate("window.__notReloaded") is True
    assert web.state()["updates"] >= 2


def test_list_filters_by_state_and_id_prefix(web: Web, cli: CLI, dash: Dash) -> None:
    ok = start(dash, "streamer", count=2, delay=0)
    start(dash, "failing")
    page = web.open("/?status=failed")
    web.wait("window.__statepipe.ready")
    failed_id = cli.json("list", "--status", "failed", "--limit", "1", "--json")[0]["id"]
    page.locator(f'tr[data-id="{failed_id}"]').wait_for(timeout=WAIT_MS)
    states = page.eval_on_selector_all("#runs tbody tr .badge", "bs => bs.map(b => b.textContent)")
    assert set(states) == {"failed"}
    page.select_option("select[name=status]", "")
    page.locator(f'tr[data-id="{ok}"]').wait_for(timeout=WAIT_MS)
    page.fill("input[name=q]", ok[:6])
    web.wait("document.querySelectorAll('#runs tbody tr').length === 1")
    page.press("input[name=q]", "Enter")
    page.wait_for_url(f"**/runs/{ok}**", timeout=WAIT_MS)


# -- the run page -------------------------------------------------------------------------------


def test_run_page_shows_tokens_as_they_stream(web: Web, cli: CLI, dash: Dash) -> None:
    run_id = start(dash, "streamer", False, count=20, delay=0.15)
    page = web.open(f"/runs/{run_id}#step=write")
    stream = "#detail pre.stream"
    seen: list[str] = []
    while len(seen) < 4:  # the text grows while the step runs, seen four times over
        handle = web.wait(
            "([sel, n]) => { const p = document.querySelector(sel); return p && p.classList.contains('live') && p.textContent.length > n && p.textContent }",
            [stream, len(seen[-1]) if seen else 0],
        )
        seen.append(handle.json_value())
    assert all(b.startswith(a) for a, b in itertools.pairwise(seen))
    web.wait("window.__statepipe.ended")
    words = " ".join(f"w{i}" for i in range(20)) + " "
    assert page.locator(stream).first.text_content() == words  # whole: nothing lost, nothing twice
    badge(web, "#run-state", "succeeded")


def test_network_lost_mid_run_the_page_ends_with_exactly_the_runs_events(web: Web, cli: CLI, store: Any, dash: Dash) -> None:
    run_id = start(dash, "streamer", False, count=30, delay=0.1)
    page = web.open(f"/runs/{run_id}#step=write")
    web.wait("window.__statepipe.seqs.length >= 5")
    web.context.set_offline(True)
    seen_offline = web.state()["last"]
    deadline = time.monotonic() + 60
    while store.get_run(run_id).last_seq < seen_offline + 10:  # the run goes on without the page
        assert time.monotonic() < deadline, "the run made no progress"
        time.sleep(0.1)
    assert web.state()["last"] <= seen_offline + 1  # nothing came through while offline
    web.context.set_offline(False)
    web.wait("window.__statepipe.ended")
    state = web.state()
    seqs = page.evaluate("window.__statepipe.seqs")
    assert seqs == [s for s in logged_seqs(cli, run_id) if s > state["after"]]  # in order, each once
    assert state["connects"] >= 2 and state["dupes"] == 0
    assert page.locator("#detail pre.stream").first.text_content() == " ".join(f"w{i}" for i in range(30)) + " "


def test_reload_mid_run_loses_nothing(web: Web, cli: CLI, dash: Dash) -> None:
    run_id = start(dash, "streamer", False, count=20, delay=0.1)
    page = web.open(f"/runs/{run_id}#step=write")
    web.wait("(document.querySelector('#detail pre.stream')?.textContent || '').length > 10")
    page.reload()
    web.wait("window.__statepipe.ended")
    after = web.state()["after"]
    assert page.evaluate("window.__statepipe.seqs") == [s for s in logged_seqs(cli, run_id) if s > after]
    assert page.locator("#detail pre.stream").first.text_content() == " ".join(f"w{i}" for i in range(20)) + " "


def test_output_with_html_is_shown_as_text(web: Web, cli: CLI, dash: Dash) -> None:
    run_id = start(dash, "streamer", count=2, delay=0)
    page = web.open(f"/runs/{run_id}#step=markup")
    page.locator("#detail pre.stream").filter(has_text="<script>alert(1)</script>").wait_for(timeout=WAIT_MS)
    assert page.locator("#detail pre.stream").first.text_content() == MARKUP
    page.locator("#detail .partials").filter(has_text="alert(2)").wait_for(timeout=WAIT_MS)
    assert "<script>alert(1)</script>" in page.locator("#result").inner_text()
    made = ", ".join(f"{box} {tag}" for box in ("#detail", "#result", "#steps") for tag in ("script", "img", "b"))
    assert page.locator(made).count() == 0  # no element came from the data
    page.wait_for_timeout(300)  # an onerror handler would have fired by now
    assert web.dialogs == []


def test_cancel_button_cancels_the_run(web: Web, cli: CLI, dash: Dash) -> None:
    run_id = start(dash, "streamer", False, count=600, delay=0.1)
    page = web.open(f"/runs/{run_id}")
    badge(web, "#run-state", "running")
    page.click("#actions button[data-act=cancel]")
    badge(web, "#run-state", "cancelled")
    assert web.dialogs and web.dialogs[0][0] == "confirm"
    assert cli.json("inspect", run_id, "--json")["run"]["state"] == "cancelled"


def test_rerun_button_reruns_from_the_chosen_step(web: Web, cli: CLI, dash: Dash) -> None:
    run_id = start(dash, "streamer", count=3, delay=0)
    page = web.open(f"/runs/{run_id}")
    web.wait("window.__statepipe.ended")
    page.select_option("#rerun-step", "write")
    page.click("#actions button[data-act=rerun]")
    page.locator('.srow[data-step="markup"]').filter(has_text="#2").wait_for(timeout=WAIT_MS)
    badge(web, "#run-state", "succeeded")
    doc = cli.json("inspect", run_id, "--json")
    assert doc["run"]["state"] == "succeeded"
    steps = {s["name"]: s for s in doc["steps"]}
    assert steps["words"]["attempt"] == 1  # upstream of the chosen step: kept
    assert [a["state"] for a in steps["write"]["attempts"]] == ["succeeded", "succeeded"]
    assert steps["write"]["attempt"] == steps["markup"]["attempt"] == 2
    page.click('.srow[data-step="write"]')
    page.locator("#detail .badge.st-invalidated").wait_for(timeout=WAIT_MS)  # attempt 1, replaced


def test_feedback_shows_the_plan_then_applies_it(web: Web, cli: CLI, dash: Dash) -> None:
    run_id = start(dash, "streamer", count=3, delay=0)
    page = web.open(f"/runs/{run_id}")
    page.fill("#feedback textarea", "the words are too short")
    page.select_option("#feedback select", "write")  # named: no classifier (and no key) needed
    page.click("#feedback button[type=submit]")
    page.locator("#plan").filter(has_text="re-runs write, markup; keeps words").wait_for(timeout=WAIT_MS)
    assert cli.json("inspect", run_id, "--json")["steps"][1]["attempt"] == 1  # a plan changes nothing
    page.click("#plan button.primary")
    page.locator('.srow[data-step="markup"]').filter(has_text="#2").wait_for(timeout=WAIT_MS)
    badge(web, "#run-state", "succeeded")
    write = next(s for s in cli.json("inspect", run_id, "--json")["steps"] if s["name"] == "write")
    assert write["attempt"] == 2 and [a["state"] for a in write["attempts"]] == ["succeeded", "succeeded"]
    page.click('.srow[data-step="write"]')
    page.locator("#detail").filter(has_text="the words are too short").wait_for(timeout=WAIT_MS)  # ctx.feedback


def test_failed_attempts_and_errors_are_shown(web: Web, cli: CLI, dash: Dash) -> None:
    run_id = start(dash, "faulty", items=3, pause=0)
    page = web.open(f"/runs/{run_id}#step=fan&item=1")
    card = page.locator("#detail .attempt[data-attempt='1']")
    card.locator(".badge.st-failed").wait_for(timeout=WAIT_MS)
    assert "transient failure" in card.locator(".error").inner_text()
    assert card.locator("details pre.traceback").count() == 1
    page.locator("#detail .attempt[data-attempt='2'] .badge.st-succeeded").wait_for(timeout=WAIT_MS)


def test_a_wide_fan_out_is_a_window_not_a_row_per_child(web: Web, cli: CLI, dash: Dash) -> None:
    run_id = start(dash, "crashy", items=400, pause=0)
    page = web.open(f"/runs/{run_id}")
    page.click('.srow[data-step="fan"] .twisty')
    list_ = page.locator(".vlist").first
    list_.locator(".srow.child").filter(has_text="succeeded").first.wait_for(timeout=WAIT_MS)
    assert page.locator(".vlist .srow").count() < 40
    list_.evaluate("el => { el.scrollTop = el.scrollHeight }")
    page.locator(".vlist .srow.child .name").filter(has_text="399").wait_for(timeout=WAIT_MS)
    assert page.locator(".vlist .srow").count() < 40
    page.locator(".vlist .srow.child").filter(has_text="399").click()
    page.locator("#detail h3").filter(has_text="fan · 399").wait_for(timeout=WAIT_MS)
    page.locator("#detail .json-box").filter(has_text="159201").wait_for(timeout=WAIT_MS)  # 399 ** 2


def test_start_a_run_from_the_workflow_page(web: Web, cli: CLI) -> None:
    page = web.open("/workflows/building")
    page.fill("#input-json", "{not json")
    page.click("#start button[type=submit]")
    page.locator("#start-error").filter(has_text="not a JSON object").wait_for(timeout=WAIT_MS)
    page.fill("#input-json", json.dumps({"step_seconds": 0, "no_such_key": 1}))
    page.click("#start button[type=submit]")
    page.locator("#start-error").filter(has_text="no_such_key").wait_for(timeout=WAIT_MS)
    page.fill("#input-json", json.dumps({"step_seconds": 0}))
    page.click("#start button[type=submit]")
    page.wait_for_url("**/runs/*", timeout=WAIT_MS)
    badge(web, "#run-state", "succeeded")
    run_id = page.url.rsplit("/", 1)[-1].split("#")[0]
    assert cli.json("inspect", run_id, "--json")["run"]["workflow"] == "building"


def test_pages_behind_a_token_ask_to_log_in_then_work(browser: Any, dash: Dash) -> None:
    cli = dash[0]
    run_id = start(dash, "streamer", count=3, delay=0)
    guarded = Server(cli, "--token", "s3cret", "--no-worker").start()
    context = browser.new_context(viewport={"width": 1200, "height": 800})
    try:
        page = context.new_page()
        page.goto(f"{guarded.url}/runs/{run_id}#step=write")
        page.wait_for_url("**/login**", timeout=WAIT_MS)
        page.fill("#token", "s3cret")
        page.click("button[type=submit]")
        page.wait_for_url(f"**/runs/{run_id}**", timeout=WAIT_MS)
        page.wait_for_function("window.__statepipe && window.__statepipe.ended", timeout=WAIT_MS)  # the stream, with the cookie
        page.click('.srow[data-step="write"]')  # (the #fragment does not survive the login's redirect)
        page.locator("#detail pre.stream").filter(has_text="w0 w1 w2").wait_for(timeout=WAIT_MS)  # and the page's own JSON
        page.goto(guarded.url + "/")
        page.locator(f'tr[data-id="{run_id}"]').wait_for(timeout=WAIT_MS)  # the API, with the cookie
    finally:
        context.close()
        guarded.stop()


def test_a_step_waiting_for_input_gets_its_value_from_the_run_page(web: Web, cli: CLI, store: Store) -> None:
    run_id = detach(cli, "waiter")
    deadline = time.monotonic() + 60
    while store.get_run(run_id).state != "waiting" and time.monotonic() < deadline:
        time.sleep(0.2)
    page = web.open(f"/runs/{run_id}")
    page.click('.srow[data-step="ask"]')
    form = page.locator("#send-input")
    form.wait_for(timeout=WAIT_MS)
    form.locator("textarea").fill('{"ok": true, "note": "from the page"}')
    form.locator("button[type=submit]").click()
    while store.get_run(run_id).state != "succeeded" and time.monotonic() < deadline:
        time.sleep(0.2)
    assert store.snapshot(run_id).result() == "ok=True note=from the page"
