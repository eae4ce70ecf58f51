"""A step that kills its own process every time it runs (as a segfault or the OOM killer
would), between two ordinary steps: for crash-loop tests. `die=false` lets it succeed."""

import os

from statepipe import RetryPolicy, Workflow

wf = Workflow("suicidal", retry=RetryPolicy(initial_interval=0.05), max_abandoned=3)


@wf.step
def before() -> str:
    return "before"


@wf.step
def boom(before: str, die: bool = True) -> str:
    if die:
        os._exit(9)
    return before + " and boom"


@wf.step
def after(boom: str) -> str:
    return boom + " and after"
