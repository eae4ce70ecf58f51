"""A declarative LLM step whose reply must be one JSON document fitting a pydantic model."""

from pydantic import BaseModel

from statepipe import RetryPolicy, Workflow

wf = Workflow("llm_json")


class Person(BaseModel):
    name: str
    age: int


@wf.llm_step(model="fake-model", shape="json", schema=Person, retry=RetryPolicy(max_attempts=3, initial_interval=0.05))
def person(who: str = "Ada Lovelace") -> str:
    return f"Describe {who}."
