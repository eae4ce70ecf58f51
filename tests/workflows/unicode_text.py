"""Text beyond ASCII, as a progress line and as the output (beside a null, which sends the
output through the json module rather than orjson)."""

from statepipe import Workflow

wf = Workflow("unicode_text")


@wf.step
def greet(ctx, text: str = "café, 中文, ☃") -> dict:
    ctx.log(f"writing {text}")
    return {"text": text, "note": None}
