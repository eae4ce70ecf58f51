"""A step guarded by `when=`: it runs only for a large `n`; its dependent runs either way."""

from statepipe import Workflow

wf = Workflow("conditional")


@wf.step
def base(n: int = 1) -> int:
    return n


@wf.step(when=lambda base: base > 5)
def big(base) -> str:
    return f"big {base}"


@wf.step
def report(big, base) -> dict:
    return {"big": big, "base": base}
