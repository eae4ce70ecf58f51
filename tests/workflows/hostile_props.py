"""One step hands the store a value drawn by tests/test_hostile_properties.py, through the field
`field` names: its output, an exception's message, a progress line, emitted chunks (`pause`
seconds apart) or a partial object.

The value arrives pickled in base64 (`blob`): the run input itself may not hold what is tested.
`nest` wraps it in that many more lists, so a deep value needs no deep pickle. `beside` > 0 puts a
list that many levels deep beside it: the value becomes [value, deep], or, for "progress_detail",
the progress line's `detail`. `after` returns what it received: what a consumer is handed."""

import base64
import pickle
import time

from statepipe import RetryPolicy, Workflow

wf = Workflow("hostile_props", retry=RetryPolicy(max_attempts=2, initial_interval=0.01, backoff="fixed"))


class Unprintable(Exception):
    """An exception whose message cannot be made into text at all."""

    def __str__(self) -> str:
        raise ValueError("no text for this exception")


def _deep(levels: int):
    value = "leaf"
    for _ in range(levels):
        value = [value]
    return value


@wf.step
def produce(ctx, field: str, blob: str, nest: int = 0, beside: int = 0, pause: float = 0.0):
    value = pickle.loads(base64.b64decode(blob))
    for _ in range(nest):
        value = [value]
    if field == "progress_detail":
        ctx.progress(value, detail=_deep(beside))
        return "done"
    if beside:
        value = [value, _deep(beside)]
    if field == "output":
        return value
    if field == "error":
        raise ValueError(value)
    if field == "unprintable":
        raise Unprintable()
    if field == "progress":
        ctx.progress(value)
    elif field == "emit":
        for i, chunk in enumerate(value):
            if i and pause:
                time.sleep(pause)
            ctx.emit(chunk)
    elif field == "partial":
        ctx.partial(value)
    return "done"


@wf.step
def after(produce):
    return produce
