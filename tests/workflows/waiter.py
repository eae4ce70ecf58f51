"""A step that waits for a person's input between two ordinary steps, for durable-wait tests.
`timeout` (seconds, optional) bounds the wait; `log` names a file each step appends its name to,
so a test counts how often each ran."""

from pydantic import BaseModel

from statepipe import Workflow

wf = Workflow("waiter")


class Answer(BaseModel):
    ok: bool
    note: str = ""


def _ran(log: str | None, name: str) -> None:
    if log:
        with open(log, "a") as fh:
            fh.write(name + "\n")


@wf.step
def before(log: str | None = None) -> str:
    _ran(log, "before")
    return "asked"


@wf.step
def ask(ctx, before: str, timeout: float | None = None, log: str | None = None) -> dict:
    _ran(log, "ask")
    answer = ctx.wait_for("answer", schema=Answer, timeout=timeout)
    return {"asked": before, **answer.model_dump()}


@wf.step
def after(ask: dict, log: str | None = None) -> str:
    _ran(log, "after")
    return f"ok={ask['ok']} note={ask['note']}"
