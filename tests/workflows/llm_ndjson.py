"""A declarative LLM step whose reply is NDJSON: one section object per line."""

from pydantic import BaseModel

from statepipe import RetryPolicy, Workflow

wf = Workflow("llm_ndjson")


class Section(BaseModel):
    title: str
    words: int


@wf.llm_step(model="fake-model", shape="ndjson", schema=Section, retry=RetryPolicy(max_attempts=2, initial_interval=0.05))
def outline(topic: str = "tides") -> str:
    return f"Outline an article about {topic}."
