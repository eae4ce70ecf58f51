"""Remakes the README's screenshots: `run` (a frame of the live display mid-run), `list` and
`inspect` at 60 and 120 columns, as SVG in docs/. Real runs of the example workflows, drawn by
the very renderables the CLI prints, into rich's recording console.

    .venv/bin/python docs/make_screenshots.py [--database-url URL]

Without a URL it starts a throwaway embedded PostgreSQL in a temporary folder, so your own
runs are neither shown nor touched; with one, the runs it makes stay in that database.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import logging
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from rich.console import Console, RenderableType

DOCS = Path(__file__).resolve().parent
REPO = DOCS.parent
WIDTHS = (60, 120)
STEP_SECONDS = 1.0  # the pace of the README's `run building -i step_seconds=1`


def save(name: str, renderable: RenderableType, width: int, title: str) -> None:
    console = Console(width=width, record=True, file=io.StringIO(), force_terminal=True, color_system="truecolor")
    console.print(renderable)
    path = DOCS / f"{name}-{width}.svg"
    console.save_svg(str(path), title=title)
    print(f"{path.relative_to(REPO)}: {path.stat().st_size / 1024:.0f} KB", file=sys.stderr)


def execute(url: str, workflow: str, run_input: dict[str, Any], listener: Any = None) -> str:
    """Run a workflow in this process, as `statepipe run` does; its run id."""
    from statepipe.definition.loader import load
    from statepipe.engine.runtime import Runtime
    from statepipe.store.database import open_store

    loaded = load(str(REPO / "workflows" / f"{workflow}.py"))
    runtime = Runtime(open_store(url))
    if listener is not None:
        runtime.listen(listener)
    run_id = runtime.create_run(loaded, run_input)
    asyncio.run(runtime.execute(run_id, loaded))
    runtime.close()
    return run_id


def live_run(url: str) -> str:
    """The building run, its live display drawn once while the fan-out has several children
    halfway through (the frame a user watches most)."""
    from statepipe.views.live import LiveView

    live: LiveView | None = None
    drawn = threading.Event()

    def watch(events: list[Any]) -> None:
        nonlocal live
        if live is None:
            live = LiveView(Console(), events[0].run_id, "building")
        live.update(events)
        spaces = live.rows.get("spaces")
        halfway = time.monotonic() - STEP_SECONDS / 2
        running = [c for c in spaces.children.values() if c.began and c.began < halfway] if spaces else []
        if len(running) >= 3 and not drawn.is_set():
            drawn.set()
            for width in WIDTHS:
                save("run", live, width, f"statepipe run building -i step_seconds={STEP_SECONDS}")

    return execute(url, "building", {"step_seconds": STEP_SECONDS}, watch)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", help="PostgreSQL to make the runs in (default: a throwaway embedded one)")
    args = parser.parse_args()

    home = None
    url = args.database_url
    if url is None:
        home = tempfile.mkdtemp(prefix="statepipe-screenshots-")
        os.environ["STATEPIPE_HOME"] = home
        from statepipe.store import embedded

        url = embedded.ensure_running().url
    os.chdir(REPO)  # workflows name their files relative to the repository
    from statepipe.store.database import open_store
    from statepipe.views.render import inspect_view, list_table

    try:
        execute(url, "montecarlo", {"samples": 20_000})
        execute(url, "building", {"program": "hotel", "beds": 5000, "step_seconds": 0})  # fails: too many beds
        execute(url, "building", {"program": "nursing_home", "beds": 80, "step_seconds": 0})
        run_id = live_run(url)
        store = open_store(url)
        runs = store.list_runs()
        snap = store.snapshot(run_id, preview=True)
        for width in WIDTHS:
            save("list", list_table(runs), width, "statepipe list")
            save("inspect", inspect_view(snap, store.forks_of(run_id)), width, f"statepipe inspect {run_id[:8]}")
        store.pool.close()
    finally:
        if home is not None:
            from statepipe.store import embedded

            logging.getLogger("statepipe").setLevel(logging.CRITICAL)  # runtimes' listeners see it go
            embedded.stop()
            shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
