"""The REST API: JSON documents identical to the CLI's `--json` (the same functions make both),
errors as `{error, code}` with the status that fits (app.status_of).

A request never executes a run: starting, resuming, rerunning, feedback and forking record
what is asked and leave the executing to a worker (the server's own, or any `statepipe
worker`), so a run outlives the request that started it. Cancel and pause are carried out as
the CLI carries them out: asked of the run's live owner, or done here when it has none.

Workflows are found by name only, in the folders the CLI looks in: a path sent over HTTP is
never imported, since importing a file runs its code."""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import re
import threading
from collections.abc import Coroutine
from datetime import datetime
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Header, Query, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from sse_starlette.sse import AppStatus

from statepipe.client.api import RunFilter, inspect_document
from statepipe.client.runs import check_startable, run_documents
from statepipe.client.workflows import describe, documents
from statepipe.definition.loader import discover, load_named, load_ref
from statepipe.engine.control import (
    Changed,
    cancel_request,
    control,
    pause_request,
    resumable,
    resume_detached,
    take_over,
)
from statepipe.engine.rerun import RerunPlan, plan_rerun, rerun_reason, split_sets
from statepipe.engine.runtime import Runtime
from statepipe.errors import InputError
from statepipe.llm.feedback import Routed, route
from statepipe.store.records import json_text
from statepipe.store.store import Store
from statepipe.views.web.bus import Bus
from statepipe.views.web.streams import follow_run

log = logging.getLogger("statepipe.web")
router = APIRouter(prefix="/api")
docs = APIRouter(include_in_schema=False)  # /docs and /openapi.json, behind the same guard as the API
T = TypeVar("T")

MAX_WAIT_S = 600.0  # the longest a request waits for its run to end (?wait=true, Prefer: wait=N)
SHUTDOWN_CHECK_S = 1.0  # how often a waiting request looks whether the server is stopping
MAX_PAGE = 1000  # runs in one page of GET /api/runs


class Steering:
    """The runtime the API's commands use, on an event loop of its own thread: an executor
    (cancelling a run nobody owns, say) commits on the loop it runs on, which must be neither
    the requests' loop nor the server worker's."""

    def __init__(self, store: Store) -> None:
        self.runtime = Runtime(store)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="statepipe-api-steering", daemon=True)
        self._thread.start()

    async def run(self, work: Coroutine[Any, Any, T]) -> T:
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(work, self._loop))

    def close(self) -> None:
        """After the server's worker has stopped: closing the runtime closes the shared pool."""
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        if not self._thread.is_alive():
            self._loop.close()
        self.runtime.close()


# -- documents (for /docs; the bodies are the CLI's documents, made by the CLI's functions) ------


class Error(BaseModel):
    error: str = Field(description="one line, as the CLI prints it")
    code: str = Field(description="not_found, conflict, input, invalid_request, unauthorized, cross_site, ...")


class RunDocument(BaseModel):
    """A run as `statepipe list --json` prints it (RunRow.as_json)."""

    id: str
    workflow: str
    state: str = Field(description="pending, running, waiting, paused, succeeded, failed, cancelled, or interrupted (nobody executes it)")
    input: dict[str, Any]
    result: Any = None
    error: str | None
    created_at: str
    started_at: str | None
    finished_at: str | None
    duration_s: float | None
    interrupted_at: str | None
    steps_done: int
    steps_total: int
    cost_usd: float | None
    tokens: int | None
    owner: str | None
    requested: str | None
    dry_run: bool
    forked_from: str | None
    batch_id: str | None
    parent_run: str | None = Field(description="the run whose step started this one (ctx.run_workflow), if any")
    parent_key: str | None
    last_seq: int = Field(description="the run's last event; stream from it with /api/runs/{id}/events?after=")


class RunInspection(BaseModel):
    """`statepipe inspect --json`: the run with its result, every step with its attempts, its forks."""

    run: RunDocument
    steps: list[dict[str, Any]]
    forks: list[str]


class ChangedDocument(BaseModel):
    """What a command changed, as `statepipe cancel|pause --json` prints it."""

    run_id: str
    before: str
    after: str
    note: str


class PlanSummary(BaseModel):
    rerun: list[str] = Field(description="steps that run again, in order")
    items: dict[str, list[str]] = Field(description="fan-out step -> the items that run again")
    keep: list[str] = Field(description="steps whose outputs are kept")
    reused_s: float = Field(description="seconds of work the kept steps took")
    llm_calls: int = Field(description="about how many LLM calls the rerun makes")


class RerunDocument(ChangedDocument):
    plan: PlanSummary


class FeedbackDocument(BaseModel):
    run_id: str
    routing: dict[str, Any] = Field(description="the steps chosen, with the guidance each receives, and why")
    classifier: dict[str, Any] = Field(description="who routed it (a model, simulated, or --steps), its reasoning and usage")
    plan: PlanSummary
    applied: bool
    before: str | None = None
    after: str | None = None
    note: str | None = None


class WorkflowListed(BaseModel):
    name: str
    ref: str = Field(description="the file and object it is loaded from")
    steps: int
    description: str
    error: str | None = Field(description="why the file did not load")


class WorkflowDocument(BaseModel):
    name: str
    description: str
    steps: list[dict[str, Any]] = Field(description="in order: name, depends_on, map_over, description, model, ...")
    mermaid: str = Field(description="the DAG as a Mermaid flowchart, as `statepipe graph NAME --mermaid`")
    inputs: list[dict[str, Any]] = Field(description="run-input keys: name, required, default, steps reading it")
    any_input: bool = Field(description="keys beyond `inputs` are accepted too")


# -- requests ---------------------------------------------------------------------------------


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)  # a misspelt field is an error, not a default


class StartRun(Body):
    workflow: str = Field(description="a workflow's name, as `statepipe workflows` lists it")
    input: dict[str, Any] = Field(default_factory=dict, description="the run input, checked as `run -i` checks it")
    dry_run: bool = Field(default=False, description="LLM calls answered by a simulated model: no key, no cost")
    no_cache: bool = Field(default=False, description="compute every step, even cacheable ones with a cached output")


class CancelRun(Body):
    compensate: bool = Field(default=False, description="undo completed steps that declare a compensation")
    wait: float = Field(default=30.0, ge=0, le=MAX_WAIT_S, description="seconds to wait for a live owner to stop")


class PauseRun(Body):
    now: bool = Field(default=False, description="stop running steps too (they run again on resume)")
    wait: float = Field(default=0.0, ge=0, le=MAX_WAIT_S, description="seconds to wait for a live owner to pause")


class ResumeRun(Body):
    """Nothing to say: resuming continues the run as it stands."""


class RerunRun(Body):
    from_steps: list[str] = Field(default_factory=list, alias="from", description="run these steps and everything downstream again")
    item: list[str] = Field(default_factory=list, description="with one fan-out step in `from`: only these items")
    set: dict[str, Any] = Field(default_factory=dict, description='{"key": value} changes the run input, {"step.param": value} one step\'s input')
    input: dict[str, Any] | None = Field(default=None, description="a new run input")
    feedback: str | None = Field(default=None, description="guidance for the re-run steps (ctx.feedback)")
    reason: str | None = Field(default=None, description="why; recorded with the rerun event")
    strict: bool = Field(default=False, description="refuse if a step's code changed since the run recorded it")


class FeedbackRun(Body):
    text: str = Field(min_length=1, description="what is wrong, in your words")
    steps: list[str] | None = Field(default=None, description="the steps to re-run: skips the classifier")
    model: str | None = Field(default=None, description="the classifier model (default: STATEPIPE_FEEDBACK_MODEL, the workflow's first, else gpt-4o-mini)")
    dry_run: bool = Field(default=False, description="a simulated classifier: no key, deterministic")
    apply: bool = Field(default=False, description="apply the plan (else only return it)")


class ForkRun(Body):
    from_steps: list[str] = Field(default_factory=list, alias="from", description="run these steps and what follows anew")


ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"model": Error, "description": "unknown or malformed run id, or unknown workflow"},
    409: {"model": Error, "description": "the run's state does not allow it (finished, executing elsewhere)"},
    422: {"model": Error, "description": "bad input: the body, the run input, a step name"},
}


# -- helpers ----------------------------------------------------------------------------------


def _json(doc: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """What the CLI prints, compact; json_text writes integers of any size exactly."""
    return Response(json_text(doc), status_code=status, media_type="application/json", headers=headers)


def _store(request: Request) -> Store:
    store: Store = request.app.state.store
    return store


def _steering(request: Request) -> Steering:
    steering: Steering = request.app.state.steering
    return steering


def _run_document(store: Store, run_id: str) -> dict[str, Any]:
    return run_documents(store, [store.get_run(run_id)])[0]


def encode_cursor(created_at: datetime, run_id: str) -> str:
    """The cursor of the page after this run: where it stands in list order, opaque to clients."""
    raw = json.dumps([created_at.isoformat(), run_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        at, run_id = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        return datetime.fromisoformat(at), str(run_id)
    except (ValueError, TypeError, binascii.Error):
        raise InputError("invalid cursor: pass on the one a Link or X-Next-Cursor header gave") from None


def _wait_seconds(wait: bool, prefer: str | None) -> float | None:
    """?wait=true waits up to MAX_WAIT_S; `Prefer: wait=N` (RFC 7240) up to N seconds."""
    asked = re.search(r"\bwait\s*=\s*(\d+(?:\.\d+)?)", prefer or "")
    if asked:
        return min(float(asked.group(1)), MAX_WAIT_S)
    return MAX_WAIT_S if wait else None


async def _ended(bus: Bus, run_id: str, seconds: float) -> str | None:
    """The run's final state once it ends, or None after `seconds`, or sooner when the server is
    shutting down (uvicorn waits for open requests before it stops): waits on the server's bus."""

    async def end() -> str | None:
        state = None
        async for kind, value in follow_run(bus, run_id, 0, True):  # run out: its subscription ends with it
            if kind == "end":
                state = str(value)
        return state

    waiting = asyncio.ensure_future(end())
    deadline = asyncio.get_running_loop().time() + seconds
    try:
        while not waiting.done():
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0 or AppStatus.should_exit:  # set on SIGTERM/SIGINT, as the streams see it
                return None
            await asyncio.wait({waiting}, timeout=min(left, SHUTDOWN_CHECK_S))
        return waiting.result()
    finally:
        waiting.cancel()


async def _rerun_detached(steering: Steering, run_id: str, plan: RerunPlan, strict: bool) -> Changed:
    """A rerun as `statepipe rerun` starts one (a live owner paused first), its executing left
    to a worker."""
    runtime = steering.runtime
    await steering.run(take_over(runtime, run_id, log.info))
    before = await asyncio.to_thread(runtime.rerun_detached, run_id, plan, strict=strict)
    return Changed(run_id, before, "running", "queued for a worker")


# -- workflows --------------------------------------------------------------------------------


@router.get("/workflows", tags=["workflows"], summary="Workflows the server can run: `statepipe workflows --json`",
            response_model=None, responses={200: {"model": list[WorkflowListed]}})
async def list_workflows() -> Response:
    """Found by name in ./workflows and STATEPIPE_WORKFLOWS_PATH, as the CLI finds them; a
    file that does not load is listed with its error."""
    return _json(await asyncio.to_thread(lambda: documents(discover())))


@router.get("/workflows/{name}", tags=["workflows"], summary="One workflow: its steps, dependencies, inputs and DAG",
            response_model=None, responses={200: {"model": WorkflowDocument}, 404: ERRORS[404]})
async def get_workflow(name: str) -> Response:
    """`mermaid` is what `statepipe graph NAME --mermaid` prints; `inputs` are the run-input
    keys its steps read, for a form that starts a run."""
    return _json(await asyncio.to_thread(lambda: describe(load_named(name).workflow)))


# -- runs -------------------------------------------------------------------------------------


@router.post("/runs", tags=["runs"], summary="Start a run (201); with ?wait=true or Prefer: wait=N, wait for its result",
             response_model=None, status_code=201,
             responses={200: {"model": RunInspection, "description": "it ended within the wait: `inspect --json`"},
                        201: {"model": RunDocument, "description": "created; a worker executes it"},
                        202: {"model": RunDocument, "description": "it did not end within the wait"}, **ERRORS})
async def start_run(
    request: Request,
    body: StartRun,
    wait: Annotated[bool, Query(description=f"wait up to {MAX_WAIT_S:g}s for the run to end")] = False,
    prefer: Annotated[str | None, Header(description="wait=N: wait up to N seconds for the run to end")] = None,
) -> Response:
    """The input is checked as `statepipe run` checks it (unknown and missing keys, text
    PostgreSQL cannot store, NaN) and a bad one is refused with nothing stored. The run is
    created for any worker to execute (`run --detach`); `Location` names it. Synchronous
    invocation waits for it to end and returns `inspect --json`, with its result."""
    store, runtime = _store(request), _steering(request).runtime
    seconds = _wait_seconds(wait, prefer)

    def create() -> str:
        loaded = load_named(body.workflow)
        check_startable(loaded.workflow, body.input, body.dry_run)
        return runtime.create_run(loaded, body.input, detach=True, dry_run=body.dry_run, no_cache=body.no_cache)

    run_id = await asyncio.to_thread(create)
    headers = {"Location": f"/api/runs/{run_id}"}
    if seconds is None:
        return _json(await asyncio.to_thread(_run_document, store, run_id), 201, headers)
    if prefer and "wait" in prefer:
        headers["Preference-Applied"] = f"wait={seconds:g}"
    if await _ended(request.app.state.bus, run_id, seconds) is not None:
        return _json(await asyncio.to_thread(inspect_document, store, run_id), 200, headers)
    return _json(await asyncio.to_thread(_run_document, store, run_id), 202, headers)


@router.get("/runs", tags=["runs"], summary="Runs, newest first: `statepipe list --json`, a page at a time",
            response_model=None, responses={200: {"model": list[RunDocument]}, 422: ERRORS[422]})
async def list_runs(
    request: Request,
    status: Annotated[list[str], Query(description="only runs in this state; repeatable")] = [],  # noqa: B006 - FastAPI copies it
    workflow: Annotated[str | None, Query(description="only runs of this workflow")] = None,
    since: Annotated[str | None, Query(description="only runs created since: 30m, 12h, 7d or an ISO date")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE, description="runs in a page")] = 20,
    batch: Annotated[str | None, Query(description="only runs of this batch")] = None,
    cursor: Annotated[str | None, Query(description="the next page: as the Link or X-Next-Cursor header gave it")] = None,
) -> Response:
    """The body is the array `statepipe list --json` prints. When more runs match, the next
    page is linked by `Link: <...>; rel="next"` (and its cursor is in `X-Next-Cursor`); a run
    created meanwhile shifts nothing, so pages neither repeat nor skip a run."""
    store = _store(request)

    def read() -> tuple[list[dict[str, Any]], str | None]:
        chosen = RunFilter.of(status, workflow, since, batch, option="since")
        runs = chosen.rows(store, limit + 1, before=_decode_cursor(cursor) if cursor else None)
        page = runs[:limit]
        return run_documents(store, page), encode_cursor(page[-1].created_at, page[-1].id) if len(runs) > limit else None

    docs, next_cursor = await asyncio.to_thread(read)
    headers = {}
    if next_cursor is not None:
        url = request.url.include_query_params(cursor=next_cursor)
        headers = {"Link": f'<{url.path}?{url.query}>; rel="next"', "X-Next-Cursor": next_cursor}
    return _json(docs, headers=headers)


@router.get("/runs/{run_id}", tags=["runs"], summary="A run with its steps and attempts: `statepipe inspect --json`",
            response_model=None, responses={200: {"model": RunInspection}, 404: ERRORS[404]})
async def get_run(request: Request, run_id: str) -> Response:
    """A unique prefix of the id is enough, as on the command line."""
    store = _store(request)
    return _json(await asyncio.to_thread(inspect_document, store, run_id))


# -- steering ---------------------------------------------------------------------------------


@router.post("/runs/{run_id}/cancel", tags=["steering"], summary="Cancel a run: `statepipe cancel RUN --json`",
             response_model=None, responses={200: {"model": ChangedDocument}, **ERRORS})
async def cancel_run(request: Request, run_id: str, body: CancelRun = CancelRun()) -> Response:  # noqa: B008 - a constant default body
    """Its live owner is asked and given `wait` seconds; a run nobody executes is cancelled
    here. A finished run is left as it is (`note` says so)."""
    store, steering = _store(request), _steering(request)
    full = await asyncio.to_thread(store.resolve_run_id, run_id)
    changed = await steering.run(control(steering.runtime, full, cancel_request(body.compensate), body.wait))
    return _json(changed.as_json())


@router.post("/runs/{run_id}/pause", tags=["steering"], summary="Pause a run: `statepipe pause RUN --json`",
             response_model=None, responses={200: {"model": ChangedDocument}, **ERRORS})
async def pause_run(request: Request, run_id: str, body: PauseRun = PauseRun()) -> Response:  # noqa: B008 - a constant default body
    """No new step starts; running steps finish, or stop with `now` (they run again on resume)."""
    store, steering = _store(request), _steering(request)
    full = await asyncio.to_thread(store.resolve_run_id, run_id)
    kind, wait = pause_request(body.now, body.wait)
    changed = await steering.run(control(steering.runtime, full, kind, wait))
    return _json(changed.as_json())


@router.post("/runs/{run_id}/resume", tags=["steering"], summary="Hand a paused, interrupted or failed run to a worker: `statepipe resume --detach`",
             response_model=None, responses={200: {"model": ChangedDocument}, **ERRORS})
async def resume_run(request: Request, run_id: str, body: ResumeRun = ResumeRun()) -> Response:  # noqa: B008 - a constant default body
    """Completed steps are not run again; a failed run's failed steps are. 409 for a run that
    succeeded, was cancelled, or is being executed."""
    store, runtime = _store(request), _steering(request).runtime

    def resume() -> Changed:
        full = store.resolve_run_id(run_id)
        resumable(store, full)
        return resume_detached(runtime, full)

    return _json((await asyncio.to_thread(resume)).as_json())


@router.post("/runs/{run_id}/rerun", tags=["steering"], summary="Run steps again with everything downstream: `statepipe rerun`",
             response_model=None, responses={200: {"model": RerunDocument}, **ERRORS})
async def rerun_run(request: Request, run_id: str, body: RerunRun) -> Response:
    """The plan is checked first (unknown steps, items or keys: 422, nothing changed), then
    applied in one commit: a live owner is paused first, what the plan touches is invalidated,
    every other step keeps its output, and a worker executes the rest. `plan` says what it
    does, as `statepipe rerun` prints it."""
    store, steering = _store(request), _steering(request)

    def plan() -> tuple[str, RerunPlan, dict[str, Any]]:
        full = store.resolve_run_id(run_id)
        snap = store.snapshot(full)
        wf = load_ref(snap.run.workflow_ref).workflow
        run_sets, step_sets = split_sets(body.set.items())
        said = [f"{k}={json_text(v)}" for k, v in body.set.items()]
        planned = plan_rerun(
            wf, snap, from_steps=body.from_steps, items=body.item, run_sets=run_sets, step_sets=step_sets,
            new_input=body.input, feedback=body.feedback,
            reason=body.reason or rerun_reason(body.from_steps, body.item, said, body.input is not None),
        )
        return full, planned, planned.summary(wf, snap)

    full, planned, summary = await asyncio.to_thread(plan)
    changed = await _rerun_detached(steering, full, planned, body.strict)
    return _json({**changed.as_json(), "plan": summary})


@router.post("/runs/{run_id}/feedback", tags=["steering"], summary="Route feedback to the steps it concerns; apply the plan when asked",
             response_model=None, responses={200: {"model": FeedbackDocument}, **ERRORS})
async def feedback_run(request: Request, run_id: str, body: FeedbackRun) -> Response:
    """A model reads the run and chooses the earliest steps the feedback disputes (or `steps`
    says which), as `statepipe feedback` does. Without `apply` nothing changes: show the plan,
    then send it again with `apply`. Applied, it is a rerun of those steps with the feedback in
    their ctx.feedback."""
    store, steering = _store(request), _steering(request)

    def routed() -> tuple[str, Routed, dict[str, Any]]:
        full = store.resolve_run_id(run_id)
        snap = store.snapshot(full)
        wf = load_ref(snap.run.workflow_ref).workflow
        found = route(wf, snap, body.text, body.steps or (), body.model, body.dry_run)
        return full, found, found.plan.summary(wf, snap)

    full, found, summary = await asyncio.to_thread(routed)
    doc: dict[str, Any] = {"run_id": full, "routing": found.routing.model_dump(), "classifier": found.classifier,
                           "plan": summary, "applied": False}
    if body.apply:
        changed = await _rerun_detached(steering, full, found.plan, False)
        doc.update(applied=True, **changed.as_json())
    return _json(doc)


@router.post("/runs/{run_id}/fork", tags=["steering"], summary="A new run sharing this one's outputs upstream of `from` (201)",
             response_model=None, status_code=201, responses={201: {"model": RunDocument}, **ERRORS})
async def fork_run(request: Request, run_id: str, body: ForkRun = ForkRun()) -> Response:  # noqa: B008 - a constant default body
    """`statepipe fork --detach`: the original is untouched; a worker executes the new run,
    which `Location` names."""
    store, runtime = _store(request), _steering(request).runtime

    def fork() -> str:
        return runtime.fork(store.resolve_run_id(run_id), from_steps=body.from_steps, detach=True)

    new_id = await asyncio.to_thread(fork)
    return _json(await asyncio.to_thread(_run_document, store, new_id), 201, {"Location": f"/api/runs/{new_id}"})


class SendInput(Body):
    """A value for a step waiting in ctx.wait_for(name): checked against its schema."""

    value: Any = None


class SentDocument(BaseModel):
    run_id: str
    name: str
    waiting: list[str]
    note: str


@router.post("/runs/{run_id}/signals/{name}", tags=["steering"], summary="Send a value to a step waiting for input: `statepipe send`",
             response_model=None, responses={200: {"model": SentDocument}, **ERRORS})
async def send_input(request: Request, run_id: str, name: str, body: SendInput) -> Response:
    """Delivered once (a second value for the name: 409) and checked against the waiting step's
    schema (422, nothing kept); a value sent before the step asks is kept for it. The run is
    then wanted again: the server's worker, or any, continues it."""
    store = _store(request)

    def send() -> dict[str, Any]:
        from statepipe.engine.waits import send as deliver

        return deliver(store, store.resolve_run_id(run_id), name, body.value)

    return _json(await asyncio.to_thread(send))


# -- its documentation ------------------------------------------------------------------------


@docs.get("/openapi.json")
async def openapi(request: Request) -> JSONResponse:
    return JSONResponse(request.app.openapi())


@docs.get("/docs")
async def swagger() -> HTMLResponse:
    return get_swagger_ui_html(openapi_url="/openapi.json", title="statepipe API")
