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
from statepipe.engine.executor import RETRY_REQUEST
from statepipe.engine.runtime import Runtime
from statepipe.errors import InputError
from statepipe.inputs import json_object
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
    try:
        text = path.read_text()
    except OSError as exc:
        raise InputError(f"cannot read {source}: {exc.strerror or exc}") from exc
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


def prepare(runtime: Runtime, loaded: Loaded, inputs: list[dict[str, Any]], batch_id: str) -> BatchPlan:
    """Create the batch's missing runs (left for workers) and flag its failed ones for retry."""
    for number, data in enumerate(inputs, 1):
        try:
            loaded.workflow.check_input(data)
        except InputError as exc:
            raise InputError(f"input {number}: {exc}") from exc
    existing = runtime.store.batch_runs(batch_id)
    created = retried = kept = 0
    for index, data in enumerate(inputs):
        run = existing.get(index)
        if run is None:
            runtime.create_run(loaded, data, detach=True, batch=(batch_id, index))
            created += 1
        elif run.state == "failed":
            runtime.store.request(run.id, RETRY_REQUEST)
            retried += 1
        else:
            kept += 1
    return BatchPlan(batch_id, len(inputs), created, retried, kept)


def start_pool(url: str, batch_id: str, concurrency: int, processes: int, output_dir: Path, lease_ttl: float) -> list[multiprocessing.Process]:
    """Spawned (not forked) processes: no inherited connections or threads."""
    from statepipe.views.workers import worker_process  # the process body writes results.jsonl

    ctx = multiprocessing.get_context("spawn")
    per_process = max(1, -(-concurrency // processes))
    pool = []
    previous = os.environ.get("STATEPIPE_POOL_SIZE")
    os.environ["STATEPIPE_POOL_SIZE"] = str(processes)  # each process takes its share of model limits
    try:
        for _ in range(processes):
            p = ctx.Process(target=worker_process, args=(url, batch_id, per_process, str(output_dir), lease_ttl), daemon=False)
            p.start()
            pool.append(p)
    finally:
        if previous is None:
            del os.environ["STATEPIPE_POOL_SIZE"]
        else:
            os.environ["STATEPIPE_POOL_SIZE"] = previous
    return pool


def drain(pool: list[multiprocessing.Process]) -> None:
    for p in pool:
        if p.is_alive() and p.pid is not None:
            os.kill(p.pid, signal.SIGTERM)


def default_processes(concurrency: int) -> int:
    return max(1, min(concurrency, os.cpu_count() or 1))


def summary(store: Store, batch_id: str) -> dict[str, int]:
    counts = store.batch_counts(batch_id)
    return {k: counts.get(k, 0) for k in ("succeeded", "failed", "cancelled", "running", "queued", "pending", "paused")}
