"""A step that streams its reply a word at a time, slowly, then one whose output, streamed text
and partial object are HTML: for the dashboard's browser tests (text grows while the step runs;
markup is shown as text, never run)."""

import time

from statepipe import Workflow

wf = Workflow("streamer")

MARKUP = '<script>alert(1)</script><img src=x onerror="alert(2)"><b>bold?</b>'


@wf.step
def words(count: int = 40) -> list[str]:
    return [f"w{i}" for i in range(count)]


@wf.step
def write(ctx, words: list[str], delay: float = 0.1) -> str:
    for w in words:
        ctx.emit(w + " ")
        time.sleep(delay)
    return " ".join(words)


@wf.step
def markup(ctx, write: str, html: str = MARKUP) -> dict:
    ctx.emit(html)
    ctx.partial({"html": html})
    return {"html": html, "words": len(write.split())}
