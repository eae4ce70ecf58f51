"""`statepipe feedback`: a classifier (an LLM call with structured output) routes the user's words
to the steps to re-run, with per-step guidance that reaches those steps as ctx.feedback.

The classifier talks to the local OpenAI-compatible server (tests/fake_openai.py) over real HTTP,
from the CLI subprocess (OPENAI_BASE_URL/OPENAI_API_KEY in its environment), scripted per test.
Assertions read the store; iter_diamond's steps put ctx.feedback in their output ("fb").
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import all_events, run_here, step_of
from fake_openai import FakeOpenAI, Text

DIAMOND = "iter_diamond"
TEXT = "the label should say more than r3"
GUIDANCE = "write a longer label"


@pytest.fixture
def server() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as srv:
        yield srv


def _routing(*steps: str, guidance: str = GUIDANCE) -> Text:
    """A classifier reply naming `steps`, as the model would stream it."""
    return Text(json.dumps({"steps": [{"name": s, "guidance": guidance} for s in steps], "reason": "the label is at fault"}))


def _feedback(cli: Any, server: FakeOpenAI, run_id: str, *args: str) -> Any:
    # stdin is an empty pipe: never a terminal
    return cli("feedback", run_id, *args, input="", OPENAI_BASE_URL=server.base_url, OPENAI_API_KEY="test",
               STATEPIPE_FEEDBACK_MODEL="classifier-model")


def _prompt(body: dict[str, Any]) -> str:
    return "\n".join(str(m.get("content") or "") for m in body["messages"])


def _untouched(store: Any, run_id: str, before: Any, events_before: list[Any]) -> None:
    after = store.snapshot(run_id)
    assert all_events(store, run_id) == events_before
    assert {s.key: s.attempts for s in after.steps} == {s.key: s.attempts for s in before.steps}
    assert [(s.key, s.state, s.attempt, s.feedback) for s in after.steps] == [
        (s.key, s.state, s.attempt, s.feedback) for s in before.steps]
    assert after.run.state == before.run.state


def _rerun_event(store: Any, run_id: str) -> Any:
    (event,) = [e for e in all_events(store, run_id) if e.type == "rerun"]
    return event


def _started_after(store: Any, run_id: str, seq: int) -> set[str]:
    return {e.step for e in all_events(store, run_id) if e.seq > seq and e.type == "step_started"}


def test_feedback_reruns_the_step_the_classifier_names_and_its_descendants(cli, store, server):
    run_id = run_here(store, DIAMOND)
    before = store.snapshot(run_id)
    server.script(_routing("right"))

    done = _feedback(cli, server, run_id, TEXT, "-y")

    assert done.returncode == 0, done.stderr
    after = store.snapshot(run_id)
    rerun = _rerun_event(store, run_id)
    assert rerun.data["steps"] == ["right"]
    assert rerun.data["affected"] == ["right", "join", "final"]
    assert rerun.data["classifier"] == "classifier-model"
    assert rerun.data["feedback_text"] == TEXT
    assert rerun.data["reason"] == f"feedback: {TEXT}"
    assert _started_after(store, run_id, rerun.seq) == {"right", "join", "final"}
    for name in ("root", "left"):
        assert step_of(after, name).attempts == step_of(before, name).attempts
    for name in ("right", "join", "final"):
        assert [(a.number, a.state) for a in step_of(after, name).attempts] == [(1, "succeeded"), (2, "succeeded")]
    assert after.run.state == "succeeded"


def test_feedback_guidance_reaches_the_rerun_step_as_ctx_feedback(cli, store, server):
    run_id = run_here(store, DIAMOND)
    server.script(_routing("right"))

    done = _feedback(cli, server, run_id, TEXT, "-y")

    assert done.returncode == 0, done.stderr
    after = store.snapshot(run_id)
    assert _rerun_event(store, run_id).data["feedback"] == {"right": GUIDANCE}
    assert step_of(after, "right").feedback == GUIDANCE
    assert step_of(after, "right").output == {"v": "r3", "fb": GUIDANCE}
    assert step_of(after, "right").attempts[0].output == {"v": "r3", "fb": None}  # before the feedback


def test_classifier_request_carries_the_dag_step_descriptions_outputs_and_feedback(cli, store, server):
    run_id = run_here(store, DIAMOND)
    server.script(_routing("right"))

    done = _feedback(cli, server, run_id, TEXT, "-y")

    assert done.returncode == 0, done.stderr
    (request,) = server.requests
    assert request["model"] == "classifier-model"
    prompt = _prompt(request)
    assert "numbers, two views of them, combined" in prompt  # the workflow's description
    for line in (
        "- root: Makes the numbers 0 to n-1.",
        "- left (after root): Multiplies the sum of the numbers by the factor.",
        "- right (after root): Writes a label with the count of the numbers.",
        "- join (after left, right): Combines the label and the product.",
        "- final (after join): Upper-cases the combination.",
    ):
        assert line in prompt
    assert 'v: "r3:6"' in prompt  # current outputs (summarised)
    assert TEXT in prompt


def test_malformed_classifier_reply_is_repaired_on_the_next_request(cli, store, server):
    run_id = run_here(store, DIAMOND)
    server.script(_routing("labels"), _routing("right"))

    done = _feedback(cli, server, run_id, TEXT, "-y")

    assert done.returncode == 0, done.stderr
    first, second = server.requests
    assert "unknown step 'labels'" not in _prompt(first)
    assert "unknown step 'labels'" in _prompt(second)
    assert _rerun_event(store, run_id).data["steps"] == ["right"]
    assert step_of(store.snapshot(run_id), "right").output == {"v": "r3", "fb": GUIDANCE}


def test_classifier_reply_that_stays_invalid_is_rejected_and_the_run_untouched(cli, store, server):
    run_id = run_here(store, DIAMOND)
    before = store.snapshot(run_id)
    events_before = all_events(store, run_id)
    server.always(_routing("labels"))

    done = _feedback(cli, server, run_id, TEXT, "-y")

    assert done.returncode != 0
    assert "labels" in done.stderr
    assert len(server.requests) == 3  # the reply was sent back for repair, then given up on
    _untouched(store, run_id, before, events_before)


def test_rejected_classifier_reply_is_reported_as_one_error_line(cli, store, server):
    run_id = run_here(store, DIAMOND)
    server.always(_routing("labels"))

    done = _feedback(cli, server, run_id, TEXT, "-y")

    assert done.returncode != 0
    assert "Traceback" not in done.stderr, done.stderr
    assert done.stderr.count("statepipe: error:") == 1


def test_feedback_steps_option_skips_the_classifier(cli, store, server):
    run_id = run_here(store, DIAMOND)

    done = _feedback(cli, server, run_id, TEXT, "--steps", "right", "-y")

    assert done.returncode == 0, done.stderr
    assert server.requests == []
    rerun = _rerun_event(store, run_id)
    assert rerun.data["classifier"] == "--steps"
    assert rerun.data["steps"] == ["right"]
    assert step_of(store.snapshot(run_id), "right").output == {"v": "r3", "fb": TEXT}


def test_dry_run_classifier_gives_the_same_plan_for_the_same_run_and_text(cli, store, server):
    first, second = run_here(store, DIAMOND), run_here(store, DIAMOND)

    plans = []
    for run_id in (first, second):
        done = _feedback(cli, server, run_id, "the right label is wrong", "--dry-run", "-y")
        assert done.returncode == 0, done.stderr
        data = _rerun_event(store, run_id).data
        plans.append({k: data[k] for k in ("steps", "affected", "feedback", "classifier", "classifier_reason")})

    assert server.requests == []
    assert plans[0] == plans[1]
    assert plans[0]["classifier"] == "simulated"
    assert plans[0]["steps"] == ["right"]  # the words of the feedback match that step


def test_feedback_without_yes_off_a_terminal_refuses_and_changes_nothing(cli, store, server):
    run_id = run_here(store, DIAMOND)
    before = store.snapshot(run_id)
    events_before = all_events(store, run_id)

    done = _feedback(cli, server, run_id, TEXT, "--steps", "right")

    assert done.returncode == 2, done.stderr
    assert "-y" in done.stderr
    _untouched(store, run_id, before, events_before)
