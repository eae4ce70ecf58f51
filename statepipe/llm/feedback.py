"""Routing feedback: a model reads the run's DAG, step descriptions and current outputs, and says
which steps must run again and what each should do differently.

With --dry-run the simulated classifier matches the feedback's words against the steps' names,
descriptions and outputs: deterministic, labelled simulated, good for tests and demos."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, Field

from statepipe.definition.workflow import Workflow
from statepipe.engine.context import StepContext
from statepipe.engine.outputs import summarize
from statepipe.engine.rerun import RerunPlan
from statepipe.errors import ConfigError
from statepipe.llm.api import InvalidReply
from statepipe.llm.api import json as llm_json
from statepipe.llm.models import missing_keys
from statepipe.store.records import RunSnapshot

REPAIRS = 3


class StepChoice(BaseModel):
    name: str = Field(description="a step name from the workflow")
    guidance: str = Field(description="what this step should do differently, in one or two sentences")


class Routing(BaseModel):
    steps: list[StepChoice] = Field(description="the earliest steps that must run again; their descendants follow")
    reason: str


SYSTEM = (
    "You route user feedback on a workflow run to the steps that must run again. Choose the "
    "earliest steps whose output the feedback disputes; everything downstream of them re-runs "
    "automatically, so do not list descendants. Never choose a step the feedback does not touch."
)


@dataclass(frozen=True)
class Routed:
    routing: Routing
    classifier: dict[str, Any]  # who routed it (a model, "simulated", or "--steps"), why, and its usage
    plan: RerunPlan


def route(wf: Workflow, snap: RunSnapshot, text: str, steps: Sequence[str] = (), model: str | None = None, dry_run: bool = False) -> Routed:
    """The rerun feedback asks for, checked against the run; nothing is written. `steps` route
    it without a classifier; else `model` (default: STATEPIPE_FEEDBACK_MODEL, the workflow's
    first, else gpt-4o-mini) decides, simulated in a dry run."""
    dry = dry_run or snap.run.dry_run
    classifier: dict[str, Any]
    if steps:
        routing = Routing(steps=[StepChoice(name=s, guidance=text) for s in steps], reason="--steps")
        classifier = {"classifier": "--steps"}
    else:
        chosen = model or os.environ.get("STATEPIPE_FEEDBACK_MODEL") or (wf.models[0] if wf.models else "gpt-4o-mini")
        missing = [] if dry else missing_keys([chosen])
        if missing:
            raise ConfigError(f"the feedback classifier {chosen} needs {missing[0][1]}; set it, use --steps, or --dry-run")
        ctx = StepContext(snap.run.id, "feedback", None, 1, snap.run.input, lambda _e: None, dry_run=dry)
        routing = classify(ctx, wf, snap, text, chosen)
        classifier = {"classifier": "simulated" if dry else chosen, "classifier_reason": routing.reason, "classifier_usage": ctx.usage}
    plan = RerunPlan(
        steps=[c.name for c in routing.steps],
        reason=f"feedback: {text}",
        feedback={c.name: c.guidance for c in routing.steps},
        note={"feedback_text": text, **classifier},
    )
    plan.check(wf, snap)
    return Routed(routing=routing, classifier=classifier, plan=plan)


def describe_run(wf: Workflow, snap: RunSnapshot) -> str:
    outputs = {s.name: snap.output_of(s) for s in snap.parents()}
    lines = [f"workflow {wf.name}: {wf.description}".rstrip(": ")]
    for s in wf.steps:
        deps = f" (after {', '.join(s.depends_on)})" if s.depends_on else ""
        lines.append(f"- {s.name}{deps}: {s.description or 'no description'}; output: {summarize(outputs.get(s.name), 160)}")
    return "\n".join(lines)


def classify(ctx: StepContext, wf: Workflow, snap: RunSnapshot, feedback: str, model: str) -> Routing:
    """The model's routing, checked against the workflow; a reply naming unknown steps is sent
    back with the error, up to REPAIRS times, before giving up with InvalidReply."""
    if ctx.dry_run:
        return simulated(wf, snap, feedback)
    prompt = f"{describe_run(wf, snap)}\n\nFeedback from the user:\n{feedback}"
    error: str | None = None
    for _ in range(REPAIRS):
        ctx.last_error = f"InvalidReply: {error}" if error else None
        try:
            routing = Routing.model_validate(llm_json(ctx, prompt, schema=Routing, model=model, system=SYSTEM))
        except InvalidReply as exc:
            error = str(exc)
            continue
        unknown = [c.name for c in routing.steps if c.name not in wf]
        if not routing.steps:
            error = "field 'steps': choose at least one step"
        elif unknown:
            error = f"field 'steps': unknown step {unknown[0]!r}; steps are {', '.join(s.name for s in wf.steps)}"
        else:
            return routing
    raise InvalidReply(f"the classifier's reply was still invalid after {REPAIRS} tries: {error}")


def simulated(wf: Workflow, snap: RunSnapshot, feedback: str) -> Routing:
    words = set(re.findall(r"[a-z]{3,}", feedback.lower()))
    outputs = {s.name: snap.output_of(s) for s in snap.parents()}
    best, best_score = wf.steps[-1], 0
    for s in wf.steps:
        text = f"{s.name.replace('_', ' ')} {s.description} {json.dumps(outputs.get(s.name), default=str)[:2000]}".lower()
        score = sum(3 if w in s.name.lower() else 1 for w in words if w in text)
        if score > best_score:
            best, best_score = s, score
    return Routing(steps=[StepChoice(name=best.name, guidance=feedback)], reason=f"simulated classifier: words of the feedback match step {best.name}")
