"""A declarative LLM step whose reply is one JSON document holding any value as its `tree`:
the reply's top-level field is a `partial` event the moment it closes, and the output."""

from statepipe import RetryPolicy, Workflow

wf = Workflow("hostile_llm_json")

TREE = {"type": "object", "properties": {"tree": {}}, "required": ["tree"]}


@wf.llm_step(model="fake-model", shape="json", schema=TREE, retry=RetryPolicy(max_attempts=2, initial_interval=0.01, backoff="fixed"))
def grow() -> str:
    return "Reply with a tree."
