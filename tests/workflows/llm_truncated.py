"""A declarative text step that asks for a retry when its reply is cut at max_tokens."""

from statepipe import RetryPolicy, Workflow

wf = Workflow("llm_truncated")


@wf.llm_step(model="fake-model", max_tokens=20, on_truncated="retry", retry=RetryPolicy(max_attempts=3, initial_interval=0.05))
def answer(question: str = "Why is the sea salty?") -> str:
    return question
