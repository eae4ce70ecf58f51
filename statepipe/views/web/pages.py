"""The dashboard: server-rendered pages and the small static JS/CSS shipped in the package.

Pages carry their first data inside them (no round trip before the first paint) and then follow
the API's streams. What a page shows of a run is the documents `inspect --json` is made of
(render.step_json, RunRow.as_json), with big values cut for the browser: a run with 10,000
fan-out children sends its counts, and its children a page at a time (`/runs/{id}/children`),
never 10,000 rows. Every value reaches the page as JSON and is put into it as text."""

from __future__ import annotations

import asyncio
import hashlib
import threading
from collections import Counter, OrderedDict
from pathlib import Path
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, FastAPI, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, FileSystemLoader
from markupsafe import Markup

from statepipe.errors import NotFoundError, StatepipeError
from statepipe.store.records import ListPreview, RunSnapshot, StepRow
from statepipe.store.store import Store
from statepipe.views.render import step_json
from statepipe.views.web.dag import Node, dag_svg

STATIC = Path(__file__).parent / "static"
TEMPLATES = Path(__file__).parent / "templates"

LIST_ITEMS = 50  # items of a list value a page shows; the rest is counted
DICT_KEYS = 200
STRING_CHARS = 10_000
PAGE_CHARS = 200_000  # characters of strings one page's data holds, over all its values
CHILDREN_PAGE = 200  # most fan-out children one request returns
TRACE_EVENTS = 5000  # latest streamed events of one step a page reads when it opens the step
TRACE_TYPES = ("step_started", "output", "partial", "attempt_abandoned", "step_retrying", "step_failed", "step_succeeded")

router = APIRouter(include_in_schema=False)

_env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=True, trim_blocks=True, lstrip_blocks=True)
_env.policies["json.dumps_kwargs"] = {"default": str, "ensure_ascii": False}
_versions: dict[str, str] = {}


def static_url(name: str) -> str:
    """The file's URL with a hash of its content, so a browser never runs yesterday's script."""
    if name not in _versions:
        _versions[name] = hashlib.sha1((STATIC / name).read_bytes()).hexdigest()[:10]
    return f"/static/{name}?v={_versions[name]}"


_env.globals["static_url"] = static_url


def mount_static(app: FastAPI) -> None:
    app.mount("/static", StaticFiles(directory=STATIC), name="static")


def _page(name: str, status: int = 200, **context: Any) -> HTMLResponse:
    return HTMLResponse(_env.get_template(name).render(**context), status_code=status)


def _json(doc: Any) -> Response:
    return Response(orjson.dumps(doc, default=str), media_type="application/json")


def _store(request: Request) -> Store:
    store: Store = request.app.state.store
    return store


# -- values, cut for a browser -------------------------------------------------------------------


class _Budget:
    """How much more of a document a page gets: a deep value of many big lists is cut as a whole,
    not only list by list."""

    def __init__(self, values: int = 20_000, chars: int = PAGE_CHARS) -> None:
        self.values, self.chars = values, chars


def shown(value: Any, budget: _Budget | None = None) -> Any:
    """The value as a page shows it: lists, objects and strings past their limits cut, with a
    string saying how much was left out (the JSON viewer marks those); the whole value stays one
    request away in the API."""
    budget = budget or _Budget()
    budget.values -= 1
    if isinstance(value, ListPreview):
        head = [shown(v, budget) for v in value.head[:LIST_ITEMS]]
        return [*head, f"… {value.length - len(head):,} more items"]
    if isinstance(value, (list, tuple)):
        out: list[Any] = []
        for v in value:
            if len(out) >= LIST_ITEMS or budget.values <= 0:
                break
            out.append(shown(v, budget))
        return out + ([f"… {len(value) - len(out):,} more items"] if len(out) < len(value) else [])
    if isinstance(value, dict):
        kept: dict[str, Any] = {}
        for k, v in value.items():
            if len(kept) >= DICT_KEYS or budget.values <= 0:
                kept["…"] = f"{len(value) - len(kept):,} more keys"
                break
            kept[str(k)] = shown(v, budget)
        return kept
    if isinstance(value, str):
        room = max(0, min(STRING_CHARS, budget.chars))
        budget.chars -= min(len(value), room)
        if len(value) > room:
            return value[:room] + f"… ({len(value) - room:,} more characters)"
    return value


def _step_doc(snap: RunSnapshot, s: StepRow, budget: _Budget) -> dict[str, Any]:
    doc = step_json(snap, s)
    doc["output"] = shown(doc["output"], budget)
    doc["fanout"] = s.fanout
    doc["feedback"] = s.feedback
    doc["overrides"] = s.overrides
    if s.compensates is not None:
        doc["compensates"] = s.compensates
    if s.item:
        doc["index"] = s.item_index
    return doc


def run_model(snap: RunSnapshot, forks: list[str]) -> dict[str, Any]:
    """A run page's data: the run, its steps (each fan-out with its children's count by state in
    place of the children), compensations and forks."""
    budget = _Budget(chars=PAGE_CHARS)
    result = shown(snap.result(), budget)
    steps = []
    for p in snap.parents():
        doc = _step_doc(snap, p, budget)
        if p.fanout:
            kids = snap.children(p.name)
            doc["children"] = {"total": len(kids), "counts": dict(Counter(c.state for c in kids))}
        steps.append(doc)
    return {
        "run": snap.run.as_json(result),
        "steps": steps,
        "compensations": [_step_doc(snap, c, budget) for c in snap.compensations()],
        "forks": forks,
    }


def children_page(snap: RunSnapshot, step: str, offset: int, limit: int, state: str | None, item: str | None = None) -> dict[str, Any]:
    kids = snap.children(step)
    counts = dict(Counter(c.state for c in kids))
    if state:
        kids = [c for c in kids if c.state == state]
    if item is not None:
        kids = [c for c in kids if c.item == item]
    budget = _Budget(chars=PAGE_CHARS)
    return {
        "step": step, "state": state, "total": len(kids), "offset": offset, "counts": counts,
        "rows": [_step_doc(snap, c, budget) for c in kids[offset:offset + limit]],
    }


class _Snapshots:
    """The last few snapshots read, by run and last seq: a page scrolling a 10,000-child fan-out
    asks for page after page of one unchanged run, and reads it once."""

    def __init__(self, size: int = 4) -> None:
        self.size = size
        self._kept: OrderedDict[tuple[str, int], RunSnapshot] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, store: Store, run_id: str) -> RunSnapshot:
        key = (run_id, store.get_run(run_id).last_seq)
        with self._lock:
            if key in self._kept:
                self._kept.move_to_end(key)
                return self._kept[key]
        snap = store.snapshot(run_id, preview=True)
        with self._lock:
            self._kept[(run_id, snap.run.last_seq)] = snap
            while len(self._kept) > self.size:
                self._kept.popitem(last=False)
        return snap


_snapshots = _Snapshots()


def _dag(steps: list[dict[str, Any]]) -> Markup:
    return dag_svg([Node(s["name"], s["depends_on"], s["fanout"], s["state"]) for s in steps])


# -- pages ---------------------------------------------------------------------------------------


@router.get("/", response_class=HTMLResponse)
async def runs_page(request: Request) -> HTMLResponse:
    return _page("runs.html", title="Runs", nav="runs")


@router.get("/runs/{run_id}", response_class=HTMLResponse)
async def run_page(request: Request, run_id: str) -> Response:
    store = _store(request)
    try:
        full = await asyncio.to_thread(store.resolve_run_id, run_id)
    except NotFoundError as exc:
        return _page("error.html", 404, title="Not found", message=str(exc))
    if full != run_id:
        return RedirectResponse(f"/runs/{full}", status_code=307)

    def read() -> dict[str, Any]:
        return run_model(_snapshots.get(store, full), store.forks_of(full))

    model = await asyncio.to_thread(read)
    return _page("run.html", title=f"Run {full[:8]}", nav="runs", model=model, dag=_dag(model["steps"]))


@router.get("/runs/{run_id}/view")
async def run_view(request: Request, run_id: str) -> Response:
    """The run page's data again, after the events said it changed."""
    store = _store(request)

    def read() -> dict[str, Any]:
        full = store.resolve_run_id(run_id)
        return run_model(_snapshots.get(store, full), store.forks_of(full))

    return _json(await asyncio.to_thread(read))


@router.get("/runs/{run_id}/children")
async def run_children(
    request: Request,
    run_id: str,
    step: str,
    offset: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=CHILDREN_PAGE)] = 100,
    state: str | None = None,
    item: str | None = None,
) -> Response:
    """One page of a fan-out's children (optionally of one state), in item order; or the one
    child `item` (a page opened on a selected child)."""
    store = _store(request)

    def read() -> dict[str, Any]:
        snap = _snapshots.get(store, store.resolve_run_id(run_id))
        if not any(p.name == step and p.fanout for p in snap.parents()):
            raise NotFoundError(f"run {run_id}: no fan-out step {step!r}")
        return children_page(snap, step, offset, limit, state or None, item)

    return _json(await asyncio.to_thread(read))


@router.get("/runs/{run_id}/trace")
async def run_trace(request: Request, run_id: str, step: str, item: str = "") -> Response:
    """One step's streamed output, partial objects and attempt ends so far: what a page opening
    the step mid-run missed before it started following the run's events."""
    store = _store(request)

    def read() -> list[dict[str, Any]]:
        full = store.resolve_run_id(run_id)
        return [e.as_dict() for e in store.step_events(full, step, item, TRACE_TYPES, TRACE_EVENTS)]

    return _json(await asyncio.to_thread(read))


@router.get("/workflows", response_class=HTMLResponse)
async def workflows_page(request: Request) -> HTMLResponse:
    from statepipe.definition.loader import discover

    found = await asyncio.to_thread(discover)
    return _page("workflows.html", title="Workflows", nav="workflows", workflows=found)


@router.get("/workflows/{name}", response_class=HTMLResponse)
async def workflow_page(request: Request, name: str) -> HTMLResponse:
    from statepipe.definition.loader import load

    try:
        wf = (await asyncio.to_thread(load, name)).workflow
    except StatepipeError as exc:
        return _page("error.html", 404, title="Not found", message=str(exc))
    steps: list[dict[str, Any]] = [
        {"name": s.name, "depends_on": list(s.depends_on), "map_over": s.map_over, "description": s.description} for s in wf.steps
    ]
    example: dict[str, Any] = {}
    for s in wf.steps:
        for p in s.input_params:
            if p.name not in example or example[p.name] is None:
                example[p.name] = p.default if p.has_default else None
    dag = dag_svg([Node(s["name"], s["depends_on"], bool(s["map_over"])) for s in steps])
    return _page(
        "workflow.html", title=wf.name, nav="workflows", workflow=wf, steps=steps, dag=dag,
        example=orjson.dumps(example, option=orjson.OPT_INDENT_2, default=str).decode(),
    )
