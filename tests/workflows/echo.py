"""Returns its whole input: shows exactly what the CLI parsed."""

from statepipe import Workflow

wf = Workflow("echo")


@wf.step
def echo(input) -> dict:
    return input
