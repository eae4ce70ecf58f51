"""Text beyond ASCII, as a progress line and as the output."""

from statepipe import Workflow

wf = Workflow("unicode_text")


@wf.step
def greet(ctx, text: str = "café, 中文, ☃") -> dict:
    ctx.log(f"writing {text}")
    return {"text": text}
