"""topic -> outline (NDJSON, declarative llm_step) -> draft (streamed text) -> final.

Used by the crash test (kill -9 while `draft` streams, then resume) and the --dry-run tests."""

from pydantic import BaseModel

from statepipe import RetryPolicy, Workflow, llm

FAST = RetryPolicy(max_attempts=3, initial_interval=0.05)

wf = Workflow("llm_chain", models=["fake-draft"], retry=FAST)


class Section(BaseModel):
    title: str
    words: int


@wf.step
def topic(ctx, subject: str = "tides") -> str:
    ctx.emit(f"topic: {subject}\n")
    return subject.strip().lower()


@wf.llm_step(model="fake-outline", shape="ndjson", schema=Section, retry=FAST)
def outline(topic) -> str:
    return f"Outline an article about {topic} in a few sections."


@wf.step
def draft(ctx, topic, outline) -> str:
    titles = ", ".join(s["title"] for s in outline)
    return llm.text(ctx, f"Write about {topic}, covering: {titles}", model="fake-draft")


@wf.step
def final(outline, draft) -> dict:
    return {"sections": [s["title"] for s in outline], "words": sum(s["words"] for s in outline), "draft": draft, "chars": len(draft)}
