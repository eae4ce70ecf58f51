"""Needs a `topic` input (no default): a run without it is refused before it is created."""

from statepipe import Workflow

wf = Workflow("echo_needs")


@wf.step
def research(topic: str, depth: int = 1) -> str:
    return topic * depth
