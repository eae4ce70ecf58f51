"""A fan-out of LLM calls, one per item, all on the same model (its limits apply to them all)."""

from statepipe import Workflow, llm

wf = Workflow("llm_fanout", max_concurrency=32)


@wf.step
def items(count: int = 6) -> list[int]:
    return list(range(count))


@wf.step(map_over=items)
def call(ctx, item, model: str = "fake-limited") -> str:
    return llm.text(ctx, f"item {item}", model=model)
