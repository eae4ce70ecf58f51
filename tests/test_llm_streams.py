"""What a provider's stream may do to a step (issue 22): split a character's UTF-16 halves across
deltas, send a lone surrogate, end without a finish reason, or stop at the token limit.

Each test runs a real workflow against the local OpenAI-compatible server (tests/fake_openai.py)
through the real `openai` client and PostgreSQL, and reads what statepipe stored."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import all_events, error_message, run_here, step_of, workflow_path
from fake_openai import Cut, Error, FakeOpenAI, Text

from statepipe.llm import configure
from statepipe.llm import limits as llm_limits
from statepipe.llm import models as llm_models

STORY = (
    "The keeper climbed the stairs at dusk, trimmed the wick, wound the clockwork, and watched "
    "the beam sweep the water until the ships were home."
)  # 135 characters


@pytest.fixture
def server() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as srv:
        yield srv


@pytest.fixture(autouse=True)
def _model_table() -> Iterator[None]:
    """configure() and the per-model limiters are process-wide: leave them as they were."""
    saved_models, saved_limits = dict(llm_models._MODELS), dict(llm_limits._LIMITS)
    yield
    llm_models._MODELS.clear()
    llm_models._MODELS.update(saved_models)
    llm_limits._LIMITS.clear()
    llm_limits._LIMITS.update(saved_limits)


def env(server: FakeOpenAI) -> dict[str, str]:
    return {"OPENAI_BASE_URL": server.base_url, "OPENAI_API_KEY": "test"}


def texts_by_attempt(evs: list[Any], step: str) -> dict[int, str]:
    out: dict[int, str] = {}
    for e in evs:
        if e.type == "output" and e.step == step:
            out[e.attempt] = out.get(e.attempt, "") + e.data["text"]
    return out


def attempts(store: Any, run_id: str, step: str) -> list[tuple[int, str]]:
    return [(a.number, a.state) for a in step_of(store.snapshot(run_id), step).attempts]


def calls(store: Any, run_id: str, step: str) -> list[dict[str, Any]]:
    """Each attempt's LLM call record, in attempt order."""
    return [call for a in step_of(store.snapshot(run_id), step).attempts if a.usage for call in a.usage["details"]]


# -- characters split across deltas -----------------------------------------------------------------


def test_emoji_sent_as_two_surrogate_half_deltas_streams_and_stores_whole(server, store):
    content = "smile \ud83d\ude00 and wave \ud83d\udc4b"  # the halves as separate code units
    server.script(Text(content, chunk_size=7, delay=0.1))  # apart, so the halves would not share an event
    run_id = run_here(store, "llm_text", env=env(server))

    sent = [c.text for c in server.chunks]
    assert sent[0].endswith("\ud83d") and sent[1].startswith("\ude00")  # one emoji, two SSE chunks
    whole = "smile 😀 and wave 👋"
    assert store.get_run(run_id).state == "succeeded"
    assert texts_by_attempt(all_events(store, run_id), "write") == {1: whole}
    assert step_of(store.snapshot(run_id), "write").output == whole


def test_lone_surrogate_in_a_stream_ends_the_run_failed_without_a_traceback(server, cli, store):
    server.always(Text("a stray \ud800 half", chunk_size=3))
    done = cli("run", workflow_path("llm_text"), **env(server))

    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == 1, done.stderr
    [run] = store.list_runs()
    assert run.state == "failed"
    assert attempts(store, run.id, "write") == [(1, "failed"), (2, "failed"), (3, "failed")]  # retried per its policy
    assert "lone surrogate" in step_of(store.snapshot(run.id), "write").error


# -- a stream that stops early ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("framing", "error"),
    [
        ("close", "stream ended after 25 characters without a finish reason"),  # reads as a clean end
        ("length", "stream cut after 25 characters"),  # the client sees the body fall short
    ],
)
def test_stream_ending_without_finish_reason_fails_the_attempt_and_is_retried(server, store, framing, error):
    server.script(Cut(STORY, after_chars=25, framing=framing), Text(STORY, chunk_size=9))
    run_id = run_here(store, "llm_text", env=env(server))

    assert attempts(store, run_id, "write") == [(1, "failed"), (2, "succeeded")]
    assert step_of(store.snapshot(run_id), "write").output == STORY
    first = step_of(store.snapshot(run_id), "write").attempts[0]
    assert error in first.error and "fake-model" in first.error
    evs = all_events(store, run_id)
    assert texts_by_attempt(evs, "write") == {1: STORY[:25], 2: STORY}  # the partial text stays attempt 1's
    [abandoned] = [e for e in evs if e.type == "attempt_abandoned"]
    assert (abandoned.step, abandoned.attempt, abandoned.data["retrying"]) == ("write", 1, True)
    outputs = [e for e in evs if e.type == "output"]
    assert max(e.seq for e in outputs if e.attempt == 1) < abandoned.seq < min(e.seq for e in outputs if e.attempt == 2)


# -- finish reasons and truncation ------------------------------------------------------------------


def test_reply_cut_at_the_token_limit_is_kept_and_shown_truncated(server, store, cli):
    server.script(Text(STORY, finish_reason="length", usage=(12, 30)))
    run_id = run_here(store, "llm_text", env=env(server))

    assert attempts(store, run_id, "write") == [(1, "succeeded")]
    assert step_of(store.snapshot(run_id), "write").output == STORY
    [call] = calls(store, run_id, "write")
    assert (call["finish_reason"], call["truncated"]) == ("length", True)
    evs = all_events(store, run_id)
    [succeeded] = [e for e in evs if e.type == "step_succeeded"]
    assert succeeded.data["usage"]["details"][0]["truncated"] is True
    [note] = [e for e in evs if e.type == "progress" and e.data.get("truncated")]
    assert "after 30 tokens" in note.data["message"] and note.data["message"].count("fake-model") == 1
    shown = cli("inspect", run_id, COLUMNS="200")
    assert shown.returncode == 0, shown.stderr
    [row] = [line for line in shown.stdout.splitlines() if line.strip("│ ").startswith("write")]
    assert "truncated" in row


def test_on_truncated_retry_fails_the_cut_reply_and_asks_again_for_a_shorter_one(server, store):
    server.script(Text(STORY, finish_reason="length"), Text("Salt washes in from rocks."))
    run_id = run_here(store, "llm_truncated", env=env(server))

    assert attempts(store, run_id, "answer") == [(1, "failed"), (2, "succeeded")]
    assert step_of(store.snapshot(run_id), "answer").output == "Salt washes in from rocks."
    assert "ReplyTruncated" in step_of(store.snapshot(run_id), "answer").attempts[0].error
    assert [(c["finish_reason"], c["truncated"]) for c in calls(store, run_id, "answer")] == [("length", True), ("stop", False)]
    first, second = server.requests
    assert first["max_tokens"] == second["max_tokens"] == 20
    asked = [m["content"] for m in second["messages"] if m["role"] == "user"]
    assert asked[0] == "Why is the sea salty?" and "cut off at the length limit" in asked[-1]
    [abandoned] = [e for e in all_events(store, run_id) if e.type == "attempt_abandoned"]
    assert (abandoned.attempt, abandoned.data["retrying"]) == (1, True)


def test_llm_step_with_an_unknown_on_truncated_is_refused_at_load(cli, tmp_path: Path):
    path = tmp_path / "bad_truncation.py"
    path.write_text(
        "from statepipe import Workflow\n"
        "wf = Workflow('bad_truncation')\n"
        "@wf.llm_step(model='fake-model', on_truncated='ignore')\n"
        "def answer() -> str:\n"
        "    return 'hi'\n"
    )
    done = cli("run", str(path), OPENAI_API_KEY="test")

    assert done.returncode == 2
    assert "on_truncated must be keep or retry" in error_message(done)


# -- progress notes ---------------------------------------------------------------------------------


def test_rate_limit_wait_note_names_the_model_once(server, store):
    server.script(Error(429, retry_after=0.05), Text("after the pause"))
    run_id = run_here(store, "llm_text", env=env(server))

    [note] = [e for e in all_events(store, run_id) if e.type == "progress" and e.data.get("retrying")]
    assert note.data["message"].startswith("fake-model: HTTP 429")
    assert note.data["message"].count("fake-model") == 1


def test_fallback_note_names_each_model_once(server, store):
    configure("fake-primary", fallbacks=["fake-backup"])
    server.always(Error(503, retry_after=0.01), model="fake-primary")
    server.script_for("fake-backup", Text("from the backup"))
    run_id = run_here(store, "llm_text", env=env(server), model="fake-primary")

    [note] = [e for e in all_events(store, run_id) if e.type == "progress" and e.data.get("fallback")]
    message = note.data["message"]
    assert message.count("fake-primary") == 1 and message.count("fake-backup") == 1
