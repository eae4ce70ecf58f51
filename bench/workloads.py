"""The benchmark's workloads (see BENCH.md): pure step bodies, the expected results, and the
statepipe definitions built from the same bodies.

Both systems call exactly these functions; only scheduling and persistence differ. The module
imports nothing but statepipe and the standard library, so a run's stored reference
(`.../bench/workloads.py:W1`) loads like any workflow file, e.g. for `statepipe inspect`.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable
from typing import Any

from statepipe import Workflow

JSON = Any
Body = Callable[[JSON, int], JSON]

W1_STEPS = 20
W2_BRANCHES = 100
W2_SLEEP_S = 0.050
W3_STEPS = 5
W3_RECORDS = 5_000
W4_STEPS = 5
W4_RUNS = 200
W4_WARMUP_RUNS = 20
W4_CONCURRENCY = 20


# -- W1 and W4: a chain of small dicts ------------------------------------------------------


def chain_input(k: int) -> dict[str, Any]:
    return {"wf": k, "step": 0, "value": 0, "trace": "start"}


def advance(prev: dict[str, Any], i: int) -> dict[str, Any]:
    """Step i of W1/W4: one more than the previous step's value."""
    return {"wf": prev["wf"], "step": i, "value": prev["value"] + 1, "trace": f"step-{i}"}


def chain_expected(k: int, steps: int) -> dict[str, Any]:
    return {"wf": k, "step": steps, "value": steps, "trace": f"step-{steps}"}


# -- W2: fan-out ----------------------------------------------------------------------------


def w2_input(k: int) -> dict[str, Any]:
    return {"wf": k}


def produce_items(k: int) -> list[dict[str, Any]]:
    return [{"idx": i, "prompt": f"wf{k}-item-{i}"} for i in range(W2_BRANCHES)]


def answer(item: dict[str, Any]) -> dict[str, Any]:
    """A branch: 50 ms of "model call", then a deterministic answer."""
    time.sleep(W2_SLEEP_S)
    prompt: str = item["prompt"]
    return {"idx": item["idx"], "answer": f"echo: {prompt}", "tokens": len(prompt) + item["idx"] % 7}


def join_answers(answers: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "count": len(answers),
        "idx_sum": sum(a["idx"] for a in answers),
        "tokens": sum(a["tokens"] for a in answers),
    }


def w2_expected(k: int) -> dict[str, Any]:
    items = produce_items(k)
    tokens = sum(len(it["prompt"]) + it["idx"] % 7 for it in items)
    return {"count": W2_BRANCHES, "idx_sum": W2_BRANCHES * (W2_BRANCHES - 1) // 2, "tokens": tokens}


# -- W3: big outputs ------------------------------------------------------------------------

_FILLER = "statepipe benchmark record; payload text that makes each record about two hundred bytes"


def w3_input(k: int) -> dict[str, Any]:
    return {"wf": k, "records": W3_RECORDS}


def build_records(k: int, n: int) -> list[dict[str, Any]]:
    return [
        {
            "id": i,
            "key": f"wf{k}-rec-{i:05d}",
            "value": i,
            "score": (i * 37) % 1000,
            "stage": 1,
            "tags": ["alpha", "beta", "gamma"],
            "text": _FILLER,
        }
        for i in range(n)
    ]


def transform(records: list[dict[str, Any]], stage: int) -> list[dict[str, Any]]:
    return [
        {**r, "value": r["value"] + stage, "score": (r["score"] * 3 + stage) % 1000, "stage": stage} for r in records
    ]


def w3_step(prev: Any, i: int) -> list[dict[str, Any]]:
    """Step 1 builds the records from the run input; steps 2-5 transform the previous list."""
    if i == 1:
        return build_records(prev["wf"], prev["records"])
    return transform(prev, i)


def chain_result(body: Body, first: JSON, steps: int) -> JSON:
    """What a chain of `steps` calls of `body` returns, computed in memory (for the checks)."""
    value = first
    for i in range(1, steps + 1):
        value = body(value, i)
    return value


# -- statepipe definitions ------------------------------------------------------------------


def _chain_step(body: Body, i: int, upstream: str) -> Callable[..., JSON]:
    """Step i of a generated chain, receiving `upstream` (the previous step, or the run input).

    statepipe wires inputs by parameter name, so step i needs a parameter literally named after
    step i-1. Rather than generating source text for each step and exec-ing it, one generic
    function gets the signature statepipe should see: inspect.signature() honours
    `__signature__`, and the executor calls the step with exactly that keyword."""

    def step(**inputs: JSON) -> JSON:
        return body(inputs[upstream], i)

    step.__name__ = step.__qualname__ = f"s{i}"
    signature = inspect.Signature([inspect.Parameter(upstream, inspect.Parameter.KEYWORD_ONLY)])
    setattr(step, "__signature__", signature)  # noqa: B010 (typed functions declare no __signature__)
    return step


def chain_workflow(name: str, steps: int, body: Body) -> Workflow:
    """s1 -> s2 -> ... -> s<steps>; s1 reads the whole run input, s<i> the output of s<i-1>."""
    wf = Workflow(name, description=f"benchmark: {steps} steps in a chain")
    upstream = "input"
    for i in range(1, steps + 1):
        wf.step(_chain_step(body, i, upstream), name=f"s{i}")
        upstream = f"s{i}"
    return wf


W1 = chain_workflow("bench-w1", W1_STEPS, advance)
W3 = chain_workflow("bench-w3", W3_STEPS, w3_step)
W4 = chain_workflow("bench-w4", W4_STEPS, advance)

W2 = Workflow("bench-w2", description="benchmark: fan-out of 100 branches of 50 ms", max_concurrency=W2_BRANCHES)


@W2.step
def produce(wf: int) -> list[dict[str, Any]]:
    return produce_items(wf)


@W2.step(map_over=produce, concurrency=W2_BRANCHES)
def branch(item: dict[str, Any]) -> dict[str, Any]:
    return answer(item)


@W2.step
def join(branch: list[dict[str, Any]]) -> dict[str, Any]:
    return join_answers(branch)


# Step rows each system persists per workflow, for the row counts after the timed loop.
# statepipe also records the fan-out parent's own (output-less) succeeded attempt.
FLOOR_ROWS = {"W1": W1_STEPS, "W2": W2_BRANCHES + 2, "W3": W3_STEPS, "W4": W4_STEPS}
STATEPIPE_ROWS = {"W1": W1_STEPS, "W2": W2_BRANCHES + 3, "W3": W3_STEPS, "W4": W4_STEPS}
