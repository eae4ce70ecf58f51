"""Workflow(result=...): the result is `summary`'s output, though `audit` runs after it."""

from statepipe import Workflow

wf = Workflow("chosen_result", result="summary")


@wf.step
def summary(x: int = 2) -> dict:
    return {"total": x * 21}


@wf.step
def audit(summary) -> str:
    return f"checked {summary['total']}"
