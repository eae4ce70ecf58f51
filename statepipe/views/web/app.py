"""The ASGI application of `statepipe serve`: routes from api.py, streams.py and pages.py, the
error mapping every route shares, and the parts a server process owns for its lifetime (the
store's pool, the event bus, and, unless --no-worker, a worker executing the runs it starts)."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from statepipe.errors import ConflictError, DatabaseUnavailable, NotFoundError, StatepipeError
from statepipe.store.store import Store
from statepipe.views.web.bus import Bus

log = logging.getLogger("statepipe.web")


@dataclass
class ServeConfig:
    database_url: str | None = None
    output_dir: Path | None = None
    worker: bool = True
    concurrency: int = 4
    grace: float = 30.0
    token: str | None = None  # required from clients when set (binding beyond loopback)


def status_of(exc: StatepipeError) -> int:
    """The HTTP status of a statepipe error: what the CLI's exit codes say, as HTTP says it."""
    if isinstance(exc, NotFoundError):
        return 404
    if isinstance(exc, ConflictError):
        return 409
    if isinstance(exc, DatabaseUnavailable):
        return 503
    return 422  # bad input: usage, a malformed workflow or input, a missing key


def error_code(exc: BaseException) -> str:
    """`NotFoundError` -> "not_found": the `code` of an error document."""
    name = type(exc).__name__.removesuffix("Error")
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in name).lstrip("_") or "error"


def error_response(status: int, message: str, code: str) -> JSONResponse:
    return JSONResponse({"error": message, "code": code}, status_code=status)


class ServerWorker:
    """`statepipe worker` inside the server: a thread with its own event loop claiming runs, so
    the runs the API starts (and any other) are executed without another command."""

    def __init__(self, store: Store, config: ServeConfig) -> None:
        from statepipe.engine.runtime import Runtime
        from statepipe.views.jsonl import EventFiles, ResultWriter

        self.config = config
        self.runtime = Runtime(store)
        out = config.output_dir or Path("output")
        self.files = EventFiles(out, store)
        self.runtime.listen(self.files.write)
        self.results = ResultWriter(out)
        self.runtime.finished.append(self.results)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._main, name="statepipe-serve-worker", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _main(self) -> None:
        async def work() -> None:
            self._loop = asyncio.get_running_loop()
            await self.runtime.work(self.config.concurrency)

        try:
            asyncio.run(work())
        except Exception:
            log.exception("the server's worker stopped")

    def stop(self) -> None:
        """Drain as `worker` does on SIGTERM: nothing new, running steps get the grace period."""
        loop = self._loop
        if loop is not None and self._thread.is_alive():
            loop.call_soon_threadsafe(self.runtime.stop)
            loop.call_soon_threadsafe(lambda: loop.call_later(self.config.grace, self.runtime.interrupt))
            self._thread.join(self.config.grace + 10)
        self.runtime.writer.flush_views(timeout=5)
        self.files.close()
        self.results.close()
        self.runtime.close()


def create_app(config: ServeConfig) -> FastAPI:
    from statepipe import __version__
    from statepipe.store.database import open_store
    from statepipe.views.web import api, auth, pages, streams

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        store = await asyncio.to_thread(open_store, config.database_url, max_size=8)
        bus = Bus(store)
        app.state.store, app.state.bus, app.state.config = store, bus, config
        await bus.start()
        worker = ServerWorker(store, config) if config.worker else None
        app.state.worker = worker
        app.state.steering = api.Steering(store)
        if worker is not None:
            worker.start()
        try:
            yield
        finally:
            await bus.stop()
            if worker is not None:
                await asyncio.to_thread(worker.stop)
            await asyncio.to_thread(app.state.steering.close)
            store.pool.close()

    app = FastAPI(
        title="statepipe",
        version=__version__,
        description="Durable, observable AI workflows: start, watch and steer runs; every event resumable by seq.",
        lifespan=lifespan,
        docs_url=None, redoc_url=None, openapi_url=None,  # served by api.docs, behind the guard
    )

    @app.exception_handler(StatepipeError)
    async def statepipe_error(request: Request, exc: StatepipeError) -> JSONResponse:
        return error_response(status_of(exc), str(exc), error_code(exc))

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        message = f"{where}: {first.get('msg', 'invalid')}" if where else str(first.get("msg", "invalid request"))
        return error_response(422, message, "invalid_request")

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return error_response(exc.status_code, str(exc.detail), {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error"))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("request %s %s failed", request.method, request.url.path)
        return error_response(500, f"internal error: {type(exc).__name__}", "internal")

    @app.get("/api/health", tags=["server"], summary="Whether the server and its database answer")
    def health(request: Request) -> dict[str, Any]:
        bus: Bus = request.app.state.bus
        return {"ok": True, "version": __version__, "listening": bus.connected.is_set(), "worker": request.app.state.worker is not None}

    guarded = [Depends(auth.required), Depends(auth.same_site)]  # token (or loopback), and no cross-site changes
    app.include_router(api.router, dependencies=guarded)
    app.include_router(api.docs, dependencies=guarded)
    app.include_router(streams.router, dependencies=guarded)
    app.include_router(pages.router, dependencies=guarded)
    auth.install(app)
    pages.mount_static(app)
    return app
