"""A draft that waits for a person's approval or corrections, then is revised and published.

    statepipe run approval -i topic="durable workflows"      # stops: review asks for 'review'
    statepipe send <run> review -i approved=false -i notes="shorter, and name the risks"
    statepipe inspect <run>

`review` waits durably: the run rests `waiting` with no process, for as long as it takes, and
survives anything; `statepipe send` (or the client, or the HTTP API, or the dashboard) delivers
the value, checked against the Review model, and the run continues from `review`."""

from pydantic import BaseModel

from statepipe import Workflow

wf = Workflow("approval", description="draft -> review (waits for a person) -> revise -> publish")


class Review(BaseModel):
    approved: bool
    notes: str = ""


@wf.step
def draft(ctx, topic: str) -> str:
    ctx.progress("drafting")
    return f"{topic.capitalize()}: a first draft, in three paragraphs."


@wf.step
def review(ctx, draft: str, days: float = 7.0) -> dict:
    # runs again once the value comes: everything before wait_for must be safe to repeat
    ctx.progress("waiting for a reviewer: statepipe send RUN review -i approved=true")
    answer = ctx.wait_for("review", schema=Review, timeout=days * 86400)
    return answer.model_dump()


@wf.step
def revise(draft: str, review: dict) -> str:
    if review["approved"]:
        return draft
    return f"{draft} Revised as asked: {review['notes']}"


@wf.step
def publish(revise: str, review: dict) -> dict:
    return {"text": revise, "approved_first_time": review["approved"]}
