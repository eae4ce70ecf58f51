"""A process step whose first attempt kills its own process (`how`: "exit" calls os._exit(3),
"sigkill" sends itself SIGKILL, as the OOM killer would); the retry succeeds."""

import os
import signal

from statepipe import RetryPolicy, StepContext, Workflow

wf = Workflow("proc_crash", retry=RetryPolicy(max_attempts=2, initial_interval=0.05))


@wf.step(process=True)
def crash(ctx: StepContext, how: str) -> str:
    if ctx.attempt == 1:
        if how == "exit":
            os._exit(3)
        os.kill(os.getpid(), signal.SIGKILL)
    return f"attempt {ctx.attempt} survived"


@wf.step
def after(crash: str) -> str:
    return crash + ", and the run's process too"
