"""A step that hands the store text PostgreSQL cannot hold, through the field `field` names
(output, error, progress, emit, partial): `kind` says which text (surrogate: a stray latin-1
byte as os.fsdecode decodes it; nul; halves: an emoji as two surrogate halves, which is whole)."""

import os

from statepipe import RetryPolicy, Workflow

wf = Workflow("hostile", retry=RetryPolicy(max_attempts=2, initial_interval=0.01, backoff="fixed"))

TEXTS = {"surrogate": os.fsdecode(b"caf\xe9 menu"), "nul": "a\x00b", "halves": "smile \ud83d\ude00"}


@wf.step
def produce(ctx, field: str = "output", kind: str = "surrogate"):
    text = TEXTS[kind]
    if field == "progress":
        ctx.progress(text)
    elif field == "emit":
        ctx.emit(text)
    elif field == "partial":
        ctx.partial({"t": text})
    elif field == "error":
        raise ValueError(text)
    elif field == "output":
        return {"t": text}
    return "done"


@wf.step
def after(produce) -> str:
    return "after"
