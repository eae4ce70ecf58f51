"""A workflow that runs itself as a child: a cycle the depth limit must end."""

from statepipe import Workflow

wf = Workflow("ouroboros")


@wf.step
def again(ctx) -> int:
    return ctx.run_workflow("ouroboros") + 1
