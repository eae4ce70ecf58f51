"""A process step that raises an exception class of this file, which the policy never retries:
the class must cross from the step's process for the run to recognise it."""

from statepipe import RetryPolicy, Workflow


class Unfixable(Exception):
    pass


wf = Workflow("proc_raise", retry=RetryPolicy(max_attempts=3, initial_interval=0.05, never_retry=(Unfixable,)))


@wf.step(process=True)
def broken(what: str = "the input") -> str:
    raise Unfixable(f"cannot use {what}")
