"""What a rerun asks for: steps to run again (with everything downstream), fan-out items to run
again, a new run input, input values set for single steps, and guidance from feedback.

The plan is checked against the workflow before anything is written, so a typo in a step name
or an unknown item is one clear error and the run is untouched."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from statepipe.definition.workflow import Workflow
from statepipe.engine.outputs import input_text
from statepipe.errors import InputError
from statepipe.inputs import json_or_text
from statepipe.store.records import RunSnapshot, StepRow


@dataclass
class RerunPlan:
    steps: list[str] = field(default_factory=list)  # run again, with all their descendants
    items: dict[str, list[str]] = field(default_factory=dict)  # fan-out step -> item keys to run again
    reason: str = "rerun"
    input: dict[str, Any] | None = None  # the run's new input
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)  # step -> {param: value}
    feedback: dict[str, str] = field(default_factory=dict)  # step -> guidance given to ctx.feedback
    fingerprint: dict[str, str] | None = None  # the changed definition the run follows from now on
    changed: list[str] = field(default_factory=list)  # steps whose code changed since the run recorded it
    note: dict[str, Any] = field(default_factory=dict)  # recorded with the rerun event (e.g. the classifier's plan)
    affected_steps: list[str] = field(default_factory=list)  # filled in when applied

    def named(self, wf: Workflow, old_input: dict[str, Any]) -> list[str]:
        """Steps whose own inputs change: the ones named, given values, or reading a run-input
        key whose value changed."""
        names = set(self.steps) | set(self.overrides) | set(self.feedback)
        if self.input is not None:
            changed = {k for k in set(self.input) | set(old_input) if self.input.get(k) != old_input.get(k)}
            names |= {s.name for s in wf.steps if any(p.name in changed for p in s.input_params) or (
                changed and any(p.name == "input" for p in s.params))}
        return [s.name for s in wf.steps if s.name in names]

    def affected(self, wf: Workflow, old_input: dict[str, Any]) -> list[str]:
        return wf.descendants(self.named(wf, old_input) + list(self.items))

    def summary(self, wf: Workflow, snap: RunSnapshot) -> dict[str, Any]:
        """What applying the plan would do, before it is applied: steps run again, steps kept
        with the seconds of work they took, and about how many LLM calls it costs."""
        affected = self.affected(wf, snap.run.input)
        kept = [s for s in snap.parents() if s.name not in affected]
        calls = sum(max(1, len(snap.children(n))) if wf[n].map_over else 1 for n in affected if wf[n].model)
        return {"rerun": affected, "items": self.items, "keep": [s.name for s in kept], "reused_s": round(work_time(kept), 3), "llm_calls": calls}

    def check(self, wf: Workflow, snap: RunSnapshot) -> None:
        for name in [*self.steps, *self.items, *self.overrides, *self.feedback]:
            if name not in wf:
                raise InputError(f"workflow {wf.name} has no step {name!r}; steps: {', '.join(s.name for s in wf.steps)}")
        for name, keys in self.items.items():
            if wf[name].map_over is None:
                raise InputError(f"step {name} is not a fan-out: --item applies to map_over steps")
            known = {c.item for c in snap.children(name)}
            unknown = [k for k in keys if k not in known]
            if unknown:
                raise InputError(f"step {name} has no item {unknown[0]!r}; items: {', '.join(sorted(known)) or '(none yet)'}")
        for name, values in self.overrides.items():
            params = {p.name for p in wf[name].params}
            for key in values:
                if key not in params:
                    raise InputError(f"step {name} has no parameter {key!r}; parameters: {', '.join(sorted(params))}")
        for name, values in self.overrides.items():
            input_text(values, f"--set {name}.…")
        if self.input is not None:
            wf.check_input(self.input, known=snap.run.input)  # keys the run had are not refused now
            input_text(self.input, "--set")
        if snap.compensations():
            raise InputError(f"run {snap.run.id} was compensated; fork it instead (statepipe fork {snap.run.id[:8]})")


def work_time(steps: Iterable[StepRow]) -> float:
    """Seconds the succeeded ones among `steps` originally took: what reusing them saves."""
    return sum((s.finished_at - s.started_at).total_seconds() for s in steps if s.state == "succeeded" and s.started_at and s.finished_at)


def parse_sets(values: list[str]) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """`--set key=value` changes the run input; `--set step.param=value` one step's input.
    Values are read as JSON when they parse, as strings otherwise (like -i)."""
    pairs: list[tuple[str, Any]] = []
    for text in values:
        key, sep, raw = text.partition("=")
        if not sep or not key:
            raise InputError(f"invalid --set {text!r}: expected key=value or step.param=value")
        pairs.append((key, json_or_text(raw)))
    return split_sets(pairs)


def split_sets(pairs: Iterable[tuple[str, Any]]) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """Values set for a rerun: by run-input key, and by step for `step.param` keys."""
    run_input: dict[str, Any] = {}
    per_step: dict[str, dict[str, Any]] = {}
    for key, value in pairs:
        step, dot, param = key.partition(".")
        if not key or (dot and not (step and param)):
            raise InputError(f"invalid --set key {key!r}: expected key or step.param")
        if dot:
            per_step.setdefault(step, {})[param] = value
        else:
            run_input[key] = value
    return run_input, per_step


def rerun_reason(from_steps: Sequence[str], items: Sequence[str], sets: Sequence[str], new_input: bool) -> str:
    """How a rerun is recorded when its caller gives no reason: the command that asked for it."""
    return " ".join(["rerun", *(f"--from {s}" for s in from_steps), *(f"--item {i}" for i in items), *(f"--set {v}" for v in sets)]
                    + (["--input-file"] if new_input else []))


def plan_rerun(
    wf: Workflow,
    snap: RunSnapshot,
    *,
    from_steps: Sequence[str] = (),
    items: Sequence[str] = (),
    run_sets: dict[str, Any] | None = None,
    step_sets: dict[str, dict[str, Any]] | None = None,
    new_input: dict[str, Any] | None = None,
    feedback: str | None = None,
    reason: str,
) -> RerunPlan:
    """What `rerun` asks for, checked against the workflow and the run; nothing is written.
    `items`: keys of the one fan-out step in `from_steps`; `run_sets` change the run input (the
    new one, else the run's), `step_sets` single steps' inputs."""
    if items and len(from_steps) != 1:
        raise InputError("--item needs exactly one --from (the fan-out step)")
    if run_sets:
        new_input = {**(new_input if new_input is not None else snap.run.input), **run_sets}
    plan = RerunPlan(
        steps=[] if items else list(from_steps),
        items={from_steps[0]: list(items)} if items else {},
        reason=reason,
        input=new_input,
        overrides=step_sets or {},
        feedback={s: feedback for s in from_steps} if feedback else {},
    )
    if not (plan.steps or plan.items or plan.overrides or plan.input is not None):
        raise InputError("say what to run again: --from STEP, --set, or --input-file")
    plan.check(wf, snap)
    return plan
