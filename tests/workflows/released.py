"""A chain whose steps hand big lists along: census counts which upstream lists are still alive
in the process when it runs; with fail_at="census", the run fails and first's compensation
reads first's output again."""

import gc

from statepipe import NonRetryable, Workflow

wf = Workflow("released")


def _tagged(tag: str, n: int) -> list[dict]:
    # the list inside makes each dict one the garbage collector tracks, so census can see it
    return [{"from": tag, "i": i, "path": [tag]} for i in range(n)]


def _undo_first(output):
    return {"saw": len(output), "head": output[0]}


@wf.step(compensate=_undo_first)
def first(n: int = 500) -> list[dict]:
    return _tagged("first", n)


@wf.step
def second(first) -> list[dict]:
    return _tagged("second", len(first))


@wf.step
def third(second) -> list[dict]:
    return _tagged("third", len(second))


@wf.step
def census(third, fail_at: str = "") -> dict:
    if fail_at == "census":
        raise NonRetryable("census was asked to fail")
    alive = {"first": 0, "second": 0, "third": 0}
    for obj in gc.get_objects():
        if type(obj) is dict and obj.get("from") in alive:
            alive[obj["from"]] += 1
    return alive
