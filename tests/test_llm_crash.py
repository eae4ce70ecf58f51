"""`kill -9` while a model is streaming, then `statepipe resume`: only the killed step runs again.

tests/workflows/llm_chain.py runs topic -> outline (an NDJSON llm_step) -> draft (streamed text)
-> final as a real CLI subprocess against the fake OpenAI server of this process. The draft's
first reply is slow; the process is killed once draft's tokens show up on its stdout.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import EventReader, is_event, kill9, workflow_path
from fake_openai import FakeOpenAI, Text

SECTIONS = [{"title": "Moon", "words": 200}, {"title": "Sun", "words": 150}, {"title": "Coasts", "words": 250}]
DRAFT = " ".join(f"word{i:03d}" for i in range(150))  # 1,199 characters


@pytest.fixture
def server() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as srv:
        yield srv


def _texts(events: list[Any], step: str) -> dict[int, str]:
    out: dict[int, str] = {}
    for e in events:
        if e.type == "output" and e.step == step:
            out[e.attempt] = out.get(e.attempt, "") + e.data["text"]
    return out


def test_kill_9_mid_stream_then_resume_reruns_only_the_streaming_step(server, spawn, cli, store):
    env = {"OPENAI_BASE_URL": server.base_url, "OPENAI_API_KEY": "test"}
    server.script_for("fake-outline", Text("".join(json.dumps(s) + "\n" for s in SECTIONS), chunk_size=16))
    # first draft: ~300 chunks 10 ms apart (3 s), killed early; the resumed call gets it at full speed
    server.script_for("fake-draft", Text(DRAFT, chunk_size=4, delay=0.01), Text(DRAFT, chunk_size=4))

    proc = spawn("run", workflow_path("llm_chain"), "-i", "subject=Tides", **env)
    reader = EventReader(proc)
    run_id = reader.run_id
    reader.until(is_event("output", "draft"), timeout=60)
    kill9(proc)
    assert store.get_run(run_id).state == "running"  # nobody finished it
    assert server.pending("fake-draft") == 1  # the slow reply was being streamed when the process died

    done = cli("resume", run_id, **env)
    assert done.returncode == 0, done.stderr

    snap = store.snapshot(run_id)
    assert snap.run.state == "succeeded"
    attempts = {s.name: [(a.number, a.state) for a in s.attempts] for s in snap.steps}
    assert attempts["topic"] == [(1, "succeeded")]
    assert attempts["outline"] == [(1, "succeeded")]
    assert attempts["draft"] == [(1, "abandoned"), (2, "succeeded")]
    assert attempts["final"] == [(1, "succeeded")]
    assert [r["model"] for r in server.requests] == ["fake-outline", "fake-draft", "fake-draft"]
    assert snap.result() == {"sections": ["Moon", "Sun", "Coasts"], "words": 600, "draft": DRAFT, "chars": len(DRAFT)}

    events = store.events_after(run_id, 0, 100_000)
    texts = _texts(events, "draft")
    assert DRAFT.startswith(texts[1]) and 0 < len(texts[1]) < len(DRAFT)  # cut short by the kill
    assert texts[2] == DRAFT  # the retry streamed the whole reply, apart from attempt 1's text
    abandoned = [e for e in events if e.type == "attempt_abandoned"]
    assert [(e.step, e.attempt) for e in abandoned] == [("draft", 1)]
    assert [e.type for e in events if e.step == "outline" and e.type == "step_started"] == ["step_started"]
