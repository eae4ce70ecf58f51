"""The entry point of each process of a `statepipe batch` pool."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

from statepipe.engine.runtime import Runtime
from statepipe.views.jsonl import ResultWriter


def worker_process(url: str, batch_id: str, concurrency: int, output_dir: str, lease_ttl: float, go: Any) -> None:
    """Body of one pool process: a worker restricted to the batch, gone when it runs dry."""
    from statepipe.store.database import open_store

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides; it sends SIGTERM to drain
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    go.wait()
    store = open_store(url, max_size=4)
    runtime = Runtime(store, lease_ttl=lease_ttl)
    results = ResultWriter(Path(output_dir))
    runtime.finished.append(results)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, runtime.stop)
        await runtime.work(concurrency, batch_id=batch_id, until_idle=True, poll=0.5)

    try:
        asyncio.run(main())
    finally:
        runtime.close()  # the views' last callbacks are done once it returns
        results.close()


