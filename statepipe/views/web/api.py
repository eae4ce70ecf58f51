"""The REST API: JSON documents identical to the CLI's `--json` (the same functions make both),
errors as `{error, code}` with the status that fits (app.status_of)."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request

from statepipe.store.store import Store
from statepipe.views.render import inspect_json

router = APIRouter(prefix="/api", tags=["runs"])


def _store(request: Request) -> Store:
    store: Store = request.app.state.store
    return store


@router.get("/runs/{run_id}", summary="A run with its steps and attempts: `statepipe inspect --json`")
async def get_run(request: Request, run_id: str) -> dict[str, Any]:
    store = _store(request)

    def read() -> dict[str, Any]:
        snap = store.snapshot(store.resolve_run_id(run_id))
        return inspect_json(snap, store.forks_of(snap.run.id))

    return await asyncio.to_thread(read)
