"""LLM steps against a local OpenAI-compatible server (tests/fake_openai.py): no internet, no key.

The real `openai` client talks over HTTP to FakeOpenAI, scripted per test. Every assertion reads
what statepipe persisted: the event log (`output`, `partial`, `progress`, `attempt_abandoned`
events, tagged with step and attempt) and the attempts with their usage.

Output chunks are coalesced by the writer (one `output` event may carry several tokens), so text
is always compared as the concatenation of a step's `output` events for one attempt.
"""

from __future__ import annotations

import asyncio
import json
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import EventReader, error_message, is_event, workflow_path
from fake_openai import Cut, Error, FakeOpenAI, Text, ToolCall

from statepipe.definition.loader import load
from statepipe.engine.runtime import Runtime
from statepipe.llm import configure
from statepipe.llm import limits as llm_limits
from statepipe.llm import models as llm_models

STORY = (
    "Once upon a time, a small lighthouse kept watch over a restless sea. "
    "Ünïcödé waves ✓ rolled in; the keeper counted them: one, two, three… "
    "and every night the lamp turned, patient and bright, until the morning came."
)


# -- fixtures and helpers ----------------------------------------------------------------------


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeOpenAI]:
    """A fresh fake server; in-process runs reach it through the environment."""
    with FakeOpenAI() as srv:
        monkeypatch.setenv("OPENAI_BASE_URL", srv.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "test")
        yield srv


@pytest.fixture(autouse=True)
def _model_table() -> Iterator[None]:
    """configure() and the per-model limiters are process-wide: each test starts from the same
    table and leaves it as it found it."""
    saved_models, saved_limits = dict(llm_models._MODELS), dict(llm_limits._LIMITS)
    yield
    llm_models._MODELS.clear()
    llm_models._MODELS.update(saved_models)
    llm_limits._LIMITS.clear()
    llm_limits._LIMITS.update(saved_limits)


class InProcessRun:
    """A run of tests/workflows/<workflow>.py created here, executed here when asked."""

    def __init__(self, store: Any, workflow: str, **run_input: Any) -> None:
        self.loaded = load(workflow_path(workflow))
        self.runtime = Runtime(store)
        self.run_id = self.runtime.create_run(self.loaded, run_input)

    def execute(self) -> None:
        try:
            asyncio.run(self.runtime.execute(self.run_id, self.loaded))
            self.runtime.writer.flush()
        finally:
            self.runtime._closing.set()  # its control listener stops; the store belongs to the fixture
            self.runtime.writer.close()

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self.execute, daemon=True)
        thread.start()
        return thread


def run_in_process(store: Any, workflow: str, **run_input: Any) -> str:
    """Execute a run to its end; returns its id once every event is committed."""
    run = InProcessRun(store, workflow, **run_input)
    run.execute()
    return run.run_id


def events(store: Any, run_id: str) -> list[Any]:
    return store.events_after(run_id, 0, 100_000)


def texts_by_attempt(evs: list[Any], step: str, item: str | None = None) -> dict[int, str]:
    """What a consumer of the log shows for a step: its `output` text, one string per attempt."""
    out: dict[int, str] = {}
    for e in evs:
        if e.type == "output" and e.step == step and e.item == item:
            out[e.attempt] = out.get(e.attempt, "") + e.data["text"]
    return out


def step_row(store: Any, run_id: str, name: str, item: str = "") -> Any:
    return next(s for s in store.snapshot(run_id).steps if s.name == name and s.item == item)


def attempt_states(store: Any, run_id: str, name: str) -> list[tuple[int, str]]:
    return [(a.number, a.state) for a in step_row(store, run_id, name).attempts]


def _jsonl(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


# -- streaming into the event log ----------------------------------------------------------------


def test_every_token_reaches_the_event_log_once_in_order(server, store):
    server.script(Text(STORY, chunk_size=3, delay=0.002))
    run_id = run_in_process(store, "llm_text")

    evs = events(store, run_id)
    assert store.get_run(run_id).state == "succeeded"
    assert texts_by_attempt(evs, "write") == {1: STORY}
    chunks = [e for e in evs if e.type == "output"]
    assert all(e.step == "write" and e.attempt == 1 for e in chunks)
    assert [e.seq for e in chunks] == sorted(e.seq for e in chunks)
    assert step_row(store, run_id, "write").output == STORY


def test_reader_reconnecting_with_after_gets_the_missed_text_exactly_once(server, spawn, store):
    text = "".join(f"token{i:03d} " for i in range(200))  # 200 chunks 10 ms apart: 2+ s of streaming
    server.script(Text(text, chunk_size=8, delay=0.01))
    run = InProcessRun(store, "llm_text")
    first = spawn("logs", run.run_id, "--follow")
    seen = EventReader(first)
    seen.until(is_event("run_created"), timeout=30)  # the reader is connected before any token
    runner = run.start()

    seen.until(is_event("output", "write"), timeout=30)
    first.send_signal(signal.SIGKILL)  # the reader's connection drops mid-stream
    first.wait(timeout=10)
    before = list(seen.events)
    assert runner.is_alive(), "the reader must drop while the model is still streaming"

    second = spawn("logs", run.run_id, "--follow", "--after", str(before[-1]["seq"]))
    after = EventReader(second).rest(timeout=60)
    assert second.wait(timeout=10) == 0
    runner.join(timeout=60)

    combined = before + after
    assert [e["seq"] for e in combined] == list(range(1, store.get_run(run.run_id).last_seq + 1))
    missed = "".join(e["data"]["text"] for e in after if e["type"] == "output")
    assert missed and text.endswith(missed)  # the rest of the text, once
    assert "".join(e["data"]["text"] for e in combined if e["type"] == "output" and e["attempt"] == 1) == text


# -- rate limits, outages, usage ------------------------------------------------------------------


def test_429_waits_the_retry_after_hint_and_succeeds_within_the_same_attempt(server, store):
    server.script(Error(429, retry_after=0.4), Text("after the pause"))
    run_id = run_in_process(store, "llm_text")

    first, second = server.request_times
    assert second - first >= 0.4
    assert attempt_states(store, run_id, "write") == [(1, "succeeded")]
    assert step_row(store, run_id, "write").output == "after the pause"
    evs = events(store, run_id)
    assert not [e for e in evs if e.type in ("attempt_abandoned", "step_retrying")]
    waits = [e for e in evs if e.type == "progress" and e.data.get("retrying")]
    assert len(waits) == 1 and "429" in waits[0].data["message"] and waits[0].attempt == 1


def test_usage_and_configured_price_are_recorded_on_the_attempt(server, store):
    configure("fake-priced", input_per_mtok=2.0, output_per_mtok=8.0)
    server.script(Text("a b c d e f g h", chunk_size=4, delay=0.05, usage=(1200, 300)))
    run_id = run_in_process(store, "llm_text", model="fake-priced")

    [attempt] = step_row(store, run_id, "write").attempts
    usage = attempt.usage
    expected_cost = (1200 * 2.0 + 300 * 8.0) / 1_000_000
    assert (usage["prompt_tokens"], usage["completion_tokens"], usage["total_tokens"]) == (1200, 300, 1500)
    assert usage["cost_usd"] == pytest.approx(expected_cost)
    assert usage["models"] == ["fake-priced"] and usage["calls"] == 1 and usage["simulated"] is False
    [call] = usage["details"]
    assert call["model"] == "fake-priced" and call["fallback_from"] is None
    # four chunks 50 ms apart: the first token came well before the reply ended
    assert call["latency_s"] >= 0.15
    assert 0 <= call["ttft_s"] < call["latency_s"] - 0.1
    assert usage["ttft_s"] == call["ttft_s"]
    run = store.get_run(run_id)
    assert run.cost_usd == pytest.approx(expected_cost) and run.tokens == 1500


def test_500_is_retried_within_the_attempt_and_then_succeeds(server, store):
    server.script(Error(500), Text("recovered"))
    run_id = run_in_process(store, "llm_text")

    assert len(server.requests) == 2  # our retry, not a hidden one of the client's
    assert attempt_states(store, run_id, "write") == [(1, "succeeded")]
    assert step_row(store, run_id, "write").output == "recovered"


def test_fallback_model_is_used_when_the_primary_keeps_failing_and_recorded(server, store):
    configure("fake-primary", fallbacks=["fake-backup"])
    server.always(Error(503, retry_after=0.01), model="fake-primary")  # down for good
    server.script_for("fake-backup", Text("from the backup"))
    run_id = run_in_process(store, "llm_text", model="fake-primary")

    asked = [r["model"] for r in server.requests]
    assert asked[-1] == "fake-backup" and set(asked[:-1]) == {"fake-primary"} and len(asked) >= 2
    assert attempt_states(store, run_id, "write") == [(1, "succeeded")]
    assert step_row(store, run_id, "write").output == "from the backup"
    [call] = step_row(store, run_id, "write").attempts[0].usage["details"]
    assert call["model"] == "fake-backup" and call["fallback_from"] == "fake-primary"
    notes = [e for e in events(store, run_id) if e.type == "progress" and e.data.get("fallback")]
    assert [e.data["fallback"] for e in notes] == ["fake-backup"]


# -- a stream cut mid-way ------------------------------------------------------------------------


def test_stream_cut_midway_abandons_the_attempt_and_the_retry_streams_afresh(server, store):
    server.script(Cut(STORY, after_chars=40, chunk_size=4), Text(STORY, chunk_size=5))
    run_id = run_in_process(store, "llm_text")

    assert attempt_states(store, run_id, "write") == [(1, "failed"), (2, "succeeded")]
    assert step_row(store, run_id, "write").output == STORY
    evs = events(store, run_id)
    # consumers separate the texts by attempt number
    assert texts_by_attempt(evs, "write") == {1: STORY[:40], 2: STORY}
    [abandoned] = [e for e in evs if e.type == "attempt_abandoned"]
    assert (abandoned.step, abandoned.attempt) == ("write", 1)
    outputs = [e for e in evs if e.type == "output"]
    assert max(e.seq for e in outputs if e.attempt == 1) < abandoned.seq < min(e.seq for e in outputs if e.attempt == 2)


# -- structured output ---------------------------------------------------------------------------


def test_invalid_json_reply_is_repaired_with_the_error_fed_back(server, store):
    server.script(Text('{"name": "Ada", "age": "thirty-six"}'), Text('{"name": "Ada", "age": 36}'))
    run_id = run_in_process(store, "llm_json")

    assert store.get_run(run_id).state == "succeeded"
    assert step_row(store, run_id, "person").output == {"name": "Ada", "age": 36}
    attempts = step_row(store, run_id, "person").attempts
    assert [(a.number, a.state) for a in attempts] == [(1, "failed"), (2, "succeeded")]
    assert "'age'" in attempts[0].error
    first, second = server.requests
    said_first = " ".join(m["content"] for m in first["messages"])
    repair = [m["content"] for m in second["messages"] if m["role"] == "user" and "rejected" in m["content"]]
    assert "rejected" not in said_first
    assert len(repair) == 1 and "'age'" in repair[0] and "integer" in repair[0]


def test_exhausted_repairs_fail_with_a_message_naming_the_field(server, store):
    server.always(Text('{"name": "Ada"}'))  # never gives the age
    run_id = run_in_process(store, "llm_json")

    run = store.get_run(run_id)
    assert run.state == "failed"
    assert len(server.requests) == 3
    assert attempt_states(store, run_id, "person") == [(1, "failed"), (2, "failed"), (3, "failed")]
    assert "field 'age'" in run.error and "required" in run.error.lower()
    assert "field 'age'" in step_row(store, run_id, "person").error


def test_ndjson_items_become_partial_events_as_their_lines_complete(server, store):
    items = [{"title": f"Section {i}", "words": 100 * (i + 1)} for i in range(4)]
    content = "".join(json.dumps(x) + "\n" for x in items)
    # a line every ~0.5 s: room for a loaded machine, where a commit 0.2 s late had failed it
    server.script(Text(content, chunk_size=8, delay=0.1))
    run = InProcessRun(store, "llm_ndjson")
    committed: dict[int, float] = {}  # partial index -> when its event was committed

    def on_commit(evs: list[Any]) -> None:
        for e in evs:
            if e.type == "partial":
                committed[e.data["value"]["index"]] = time.monotonic()

    run.runtime.listen(on_commit)
    run.execute()

    assert step_row(store, run.run_id, "outline").output == items
    partials = [e for e in events(store, run.run_id) if e.type == "partial"]
    assert [e.data["value"] for e in partials] == [{"index": i, "value": x} for i, x in enumerate(items)]
    assert all(e.step == "outline" and e.attempt == 1 for e in partials)
    sent = server.chunk_times  # time.monotonic(), like `committed`
    line_done = [sent[pos // 8] for pos, ch in enumerate(content) if ch == "\n"]
    for i in range(len(items) - 1):
        assert committed[i] >= line_done[i]  # not before its line was complete
        assert committed[i] < sent[-1] - 0.1, f"item {i} was persisted only when the stream ended"
        assert committed[i] < line_done[i + 1], f"item {i} waited for the next line"


def test_ndjson_malformed_line_is_reported_and_the_reply_repaired(server, store):
    good = [{"title": "Intro", "words": 120}, {"title": "Tides", "words": 300}]
    bad_reply = json.dumps(good[0]) + "\nthis line is not json\n" + json.dumps(good[1]) + "\n"
    server.script(Text(bad_reply, chunk_size=7), Text("".join(json.dumps(x) + "\n" for x in good)))
    run_id = run_in_process(store, "llm_ndjson")

    evs = events(store, run_id)
    [report] = [e for e in evs if e.type == "progress" and e.data.get("error")]
    assert report.attempt == 1 and report.data["line"] == 2
    attempts = step_row(store, run_id, "outline").attempts
    assert [(a.number, a.state) for a in attempts] == [(1, "failed"), (2, "succeeded")]
    assert "line 2" in attempts[0].error
    # the good lines of the bad reply were still shown as they came
    assert [e.data["value"]["value"] for e in evs if e.type == "partial" and e.attempt == 1] == good
    assert step_row(store, run_id, "outline").output == good
    assert any("line 2" in m["content"] for m in server.requests[1]["messages"] if m["role"] == "user")


# -- tools ---------------------------------------------------------------------------------------


def test_tool_calls_are_passed_through_and_parsed(server, store):
    server.script(ToolCall("get_weather", {"city": "Paris", "unit": "c"}, chunk_size=5, id="call_42"))
    run_id = run_in_process(store, "llm_tools")

    [request] = server.requests
    [tool] = request["tools"]
    assert tool["type"] == "function" and tool["function"]["name"] == "get_weather"
    assert tool["function"]["parameters"]["required"] == ["city"]
    assert step_row(store, run_id, "ask").output == {
        "content": "",
        "tool_calls": [{"id": "call_42", "name": "get_weather", "arguments": {"city": "Paris", "unit": "c"}}],
        "finish_reason": "tool_calls",
    }


# -- keys and --dry-run ----------------------------------------------------------------------------


def test_missing_api_key_is_one_line_before_any_run_is_created(cli, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    done = cli("run", workflow_path("llm_chain"), OPENAI_BASE_URL="http://127.0.0.1:9/v1")

    assert done.returncode == 2
    message = error_message(done)
    assert "OPENAI_API_KEY" in message and "--dry-run" in message
    assert len(done.stderr.strip().splitlines()) == 1
    assert done.stdout == ""
    assert cli.json("list", "--json") == []


def _dry_run(cli: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    done = cli("run", "--dry-run", workflow_path("llm_chain"), OPENAI_BASE_URL="http://127.0.0.1:9/v1",
               STATEPIPE_SIMULATED_DELAY="0")
    assert done.returncode == 0, done.stderr
    evs = _jsonl(done.stdout)
    return cli.json("inspect", evs[0]["run_id"], "--json"), evs


def test_dry_run_runs_an_llm_workflow_without_key_or_server_labelled_simulated(cli, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    doc, evs = _dry_run(cli)

    run = doc["run"]
    assert run["state"] == "succeeded" and run["dry_run"] is True
    assert evs[0]["type"] == "run_created" and evs[0]["data"]["dry_run"] is True
    assert run["cost_usd"] == 0
    llm_steps = {s["name"]: s for s in doc["steps"] if s["name"] in ("outline", "draft")}
    for step in llm_steps.values():
        [attempt] = step["attempts"]
        usage = attempt["usage"]
        assert usage["simulated"] is True and usage["cost_usd"] == 0 and usage["models"] == ["simulated"]
        assert usage["completion_tokens"] > 0
    # the simulated NDJSON follows the step's schema, so the workflow runs end to end
    sections = llm_steps["outline"]["output"]
    assert sections and all(isinstance(s["title"], str) and isinstance(s["words"], int) for s in sections)
    assert run["result"]["draft"] and run["result"]["sections"] == [s["title"] for s in sections]
    assert "".join(e["data"]["text"] for e in evs if e["type"] == "output" and e["step"] == "draft") == run["result"]["draft"]


def test_dry_run_is_deterministic(cli, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    first, first_events = _dry_run(cli)
    second, second_events = _dry_run(cli)

    assert first["run"]["id"] != second["run"]["id"]
    assert first["run"]["result"] == second["run"]["result"]

    def streamed(evs: list[dict[str, Any]]) -> dict[str, str]:
        out: dict[str, str] = {}
        for e in evs:
            if e["type"] == "output":
                out[e["step"]] = out.get(e["step"], "") + e["data"]["text"]
        return out

    assert streamed(first_events) == streamed(second_events)


# -- limits ----------------------------------------------------------------------------------------


def _max_in_flight(server: FakeOpenAI) -> int:
    """Most requests the server was answering at once: each request spans from its arrival to
    its last content chunk."""
    last: dict[int, float] = {}
    for c in server.chunks:
        last[c.request_index] = max(last.get(c.request_index, 0.0), c.t)
    spans = [(t, last[i]) for i, t in enumerate(server.request_times)]
    return max(sum(1 for a, b in spans if a <= start <= b) for start, _ in spans)


def test_per_model_concurrency_limit_holds_across_a_fan_out(server, store):
    configure("fake-limited", max_concurrency=2)
    server.always(Text("slow reply here!", chunk_size=4, delay=0.05))  # ~0.15 s each
    run_id = run_in_process(store, "llm_fanout", count=6)

    assert store.get_run(run_id).state == "succeeded"
    assert len(server.requests) == 6
    assert _max_in_flight(server) == 2


def test_concurrency_limit_changed_after_the_model_was_first_used_applies(server, store):
    configure("fake-relimited", max_concurrency=16)
    server.always(Text("slow reply here!", chunk_size=4, delay=0.05))
    run_in_process(store, "llm_fanout", count=1, model="fake-relimited")
    configure("fake-relimited", max_concurrency=2)
    first_new = len(server.requests)
    run_id = run_in_process(store, "llm_fanout", count=6, model="fake-relimited")

    assert store.get_run(run_id).state == "succeeded"
    assert len(server.requests) == first_new + 6
    assert _max_in_flight(server) <= 2
