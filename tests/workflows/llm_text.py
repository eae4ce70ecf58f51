"""One step streaming a model's plain-text reply (tests/test_llm.py).

`model` and `prompt` come from the run input so a test picks the model it scripted; retries are
quick so a failed attempt is followed by the next one without a long wait."""

from statepipe import RetryPolicy, Workflow, llm

wf = Workflow("llm_text", models=["fake-model"], retry=RetryPolicy(max_attempts=3, initial_interval=0.05))


@wf.step
def write(ctx, prompt: str = "Tell me a story", model: str = "fake-model") -> str:
    return llm.text(ctx, prompt, model=model)
