"""What a rerun asks for: steps to run again (with everything downstream), fan-out items to run
again, a new run input, input values set for single steps, and guidance from feedback.

The plan is checked against the workflow before anything is written, so a typo in a step name
or an unknown item is one clear error and the run is untouched."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from statepipe.definition.workflow import Workflow
from statepipe.errors import InputError
from statepipe.engine.outputs import input_text
from statepipe.inputs import json_or_text
from statepipe.store.records import RunSnapshot


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


def parse_sets(values: list[str]) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """`--set key=value` changes the run input; `--set step.param=value` one step's input.
    Values are read as JSON when they parse, as strings otherwise (like -i)."""
    run_input: dict[str, Any] = {}
    per_step: dict[str, dict[str, Any]] = {}
    for text in values:
        key, sep, raw = text.partition("=")
        if not sep or not key:
            raise InputError(f"invalid --set {text!r}: expected key=value or step.param=value")
        value = json_or_text(raw)
        step, dot, param = key.partition(".")
        if dot:
            per_step.setdefault(step, {})[param] = value
        else:
            run_input[key] = value
    return run_input, per_step
