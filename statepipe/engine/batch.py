"""Batches: one run per input line, executed by a pool of worker processes.

The batch id names the (workflow, input file) pair, so running the same file again finds the
runs it made: succeeded ones are kept, failed ones are retried, missing ones are created. The
processes are ordinary workers restricted to the batch, claiming runs with SKIP LOCKED; each
keeps several runs in flight, so a pool of a few processes serves a high concurrency."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from statepipe.definition.loader import Loaded
from statepipe.engine.requests import RETRY_REQUEST
from statepipe.engine.runtime import Runtime
from statepipe.errors import InputError
from statepipe.inputs import json_object, read_text
from statepipe.store.store import Store


@dataclass(frozen=True)
class BatchPlan:
    batch_id: str
    total: int
    created: int
    retried: int
    kept: int


def read_inputs(path: Path, source: str) -> list[dict[str, Any]]:
    """Every line a JSON object; the whole file is refused on the first bad line."""
    text = read_text(path, source)
    inputs: list[dict[str, Any]] = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        inputs.append(json_object(line, f"{source} line {number}"))
    if not inputs:
        raise InputError(f"{source} has no inputs")
    return inputs


def batch_id_for(workflow: str, inputs: list[dict[str, Any]]) -> str:
    digest = hashlib.sha256(json.dumps([workflow, inputs], sort_keys=True).encode()).hexdigest()
    return f"{workflow}-{digest[:12]}"


def prepare(runtime: Runtime, loaded: Loaded, inputs: list[dict[str, Any]], batch_id: str, output_dir: str | None = None) -> BatchPlan:
    """Create the batch's missing runs (left for workers) and flag its failed ones for retry.
    `output_dir` is recorded with each new run (Runtime.create_runs)."""
    for number, data in enumerate(inputs, 1):
        try:
            loaded.workflow.check_input(data)
        except InputError as exc:
            raise InputError(f"input {number}: {exc}") from exc
    existing = runtime.store.batch_runs(batch_id)
    missing = [i for i in range(len(inputs)) if i not in existing]
    if missing:
        runtime.create_runs(loaded, [inputs[i] for i in missing], detach=True, batch_id=batch_id, batch_indices=missing,
                            output_dir=output_dir)
    failed = [run for run in existing.values() if run.state == "failed"]
    for run in failed:
        runtime.store.request(run.id, RETRY_REQUEST)
    return BatchPlan(batch_id, len(inputs), len(missing), len(failed), len(existing) - len(failed))


def start_pool(
    url: str, batch_id: str, concurrency: int, processes: int, output_dir: Path, lease_ttl: float
) -> tuple[list[multiprocessing.process.BaseProcess], Any]:
    """Start the pool before the caller opens any connection or thread: forked processes then
    share the imports already done (no re-import per process) and inherit nothing unsafe. They
    wait for `go.set()`, once the batch's runs exist."""
    from statepipe.views.workers import worker_process  # the process body writes results.jsonl

    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    ctx: Any = multiprocessing.get_context(method)  # fork or spawn: typeshed's BaseContext has no Process
    go = ctx.Event()
    per_process = max(1, -(-concurrency // processes))
    pool = []
    previous = os.environ.get("STATEPIPE_POOL_SIZE")
    os.environ["STATEPIPE_POOL_SIZE"] = str(processes)  # each process takes its share of model limits
    try:
        for _ in range(processes):
            p = ctx.Process(target=worker_process, args=(url, batch_id, per_process, str(output_dir), lease_ttl, go), daemon=False)
            p.start()
            pool.append(p)
    finally:
        if previous is None:
            del os.environ["STATEPIPE_POOL_SIZE"]
        else:
            os.environ["STATEPIPE_POOL_SIZE"] = previous
    return pool, go


def drain(pool: list[multiprocessing.process.BaseProcess]) -> None:
    for p in pool:
        if p.is_alive() and p.pid is not None:
            os.kill(p.pid, signal.SIGTERM)


def default_processes(concurrency: int) -> int:
    return max(1, min(concurrency, os.cpu_count() or 1))


def summary(store: Store, batch_id: str) -> dict[str, int]:
    counts = store.batch_counts(batch_id)
    return {k: counts.get(k, 0) for k in ("succeeded", "failed", "cancelled", "running", "queued", "pending", "paused")}
