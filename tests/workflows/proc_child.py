"""A process step that asks for a child run, which only the run's process can start."""

from statepipe import StepContext, Workflow

wf = Workflow("proc_child")


@wf.step(process=True, retries=2)
def parent(ctx: StepContext) -> str:
    return str(ctx.run_workflow("echo"))
