"""A process step that waits for a person's input (ctx.wait_for), as a thread step would."""

from statepipe import StepContext, Workflow

wf = Workflow("proc_wait")


@wf.step(process=True)
def ask(ctx: StepContext) -> str:
    answer = ctx.wait_for("answer", schema={"type": "object", "properties": {"ok": {"type": "boolean"}}})
    return f"ok={answer['ok']}"
