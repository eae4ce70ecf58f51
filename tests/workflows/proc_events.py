"""A process step that reports progress, streamed text and partial objects, interleaved, records
one LLM call's usage itself and makes one (simulated with --dry-run)."""

from statepipe import StepContext, Workflow, llm

wf = Workflow("proc_events", models=["gpt-4o-mini"])


@wf.step(process=True)
def talk(ctx: StepContext) -> str:
    ctx.progress("one")
    ctx.emit("alpha")
    ctx.partial({"n": 1})
    ctx.progress("two")
    ctx.emit("beta")
    ctx.partial({"n": 2})
    ctx.progress("three")
    ctx.record_usage({"model": "counted-by-hand", "prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7})
    return llm.text(ctx, "Say something short.", model="gpt-4o-mini")
