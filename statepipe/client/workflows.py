"""Workflows as documents: the list `statepipe workflows --json` prints and GET /api/workflows
returns, and one workflow's shape (steps, dependencies, inputs, its DAG as Mermaid text) for the
API and the dashboard's start form."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from statepipe.definition.loader import Listed
from statepipe.definition.workflow import Workflow


def documents(found: Sequence[Listed]) -> list[dict[str, Any]]:
    """The workflows loader.discover found; one that fails to load carries its error."""
    return [dataclasses.asdict(w) for w in found]


def describe(wf: Workflow) -> dict[str, Any]:
    """The workflow's steps in order with what each depends on and how it runs, its run-input
    keys (`any_input`: keys beyond them are accepted too), and `statepipe graph --mermaid`."""
    from statepipe.views.render import graph_mermaid

    steps = [
        {
            "name": s.name,
            "depends_on": list(s.depends_on),
            "map_over": s.map_over,
            "description": s.description,
            "model": s.model,
            "optional": s.optional,
            "conditional": s.when is not None,
            "max_attempts": wf.policy_for(s).max_attempts,
            "timeout": s.timeout,
            "cache": wf.cached(s),
            "compensated": s.compensate is not None,
        }
        for s in wf.steps
    ]
    inputs: dict[str, dict[str, Any]] = {}
    for s in wf.steps:
        for p in s.input_params:
            entry = inputs.setdefault(p.name, {"name": p.name, "required": False, "default": None, "steps": []})
            entry["steps"].append(s.name)
            if not p.has_default:
                entry["required"] = True
            elif entry["default"] is None:
                entry["default"] = p.default
    return {
        "name": wf.name,
        "description": wf.description,
        "steps": steps,
        "mermaid": graph_mermaid(wf),
        "inputs": sorted(inputs.values(), key=lambda i: str(i["name"])),
        "any_input": wf.inputs() is None,
    }
