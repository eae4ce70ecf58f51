"""A step whose output is a long list: what inspect shows of it."""

from statepipe import Workflow

wf = Workflow("rows")


@wf.step
def rows(n: int = 3000) -> list:
    return [{"key": f"key-{i:05d}", "n": i + 1} for i in range(n)]


@wf.step
def count(rows) -> int:
    return len(rows)
