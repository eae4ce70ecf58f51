"""Outputs that JSON reshapes (a tuple, integer keys), small and big: what does the next step get?"""

from statepipe import Workflow

wf = Workflow("shapes")


@wf.step
def produce(size: int = 10) -> dict:
    return {"pair": (1, 2), "by_number": {7: "seven"}, "filler": ["x" * 100] * size}


@wf.step
def describe(produce) -> dict:
    return {
        "pair_type": type(produce["pair"]).__name__,
        "keys": sorted(produce["by_number"]),
        "filler": len(produce["filler"]),
    }
