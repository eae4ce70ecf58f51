"""A step that returns a value JSON cannot hold (a set)."""

from statepipe import Workflow

wf = Workflow("nonjson")


@wf.step
def numbers() -> list:
    return [3, 1, 2]


@wf.step
def unique(numbers) -> set:
    return set(numbers)
