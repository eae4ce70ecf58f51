"""Event latency of `statepipe serve`: from a transition's commit to its arrival at SSE clients,
with 1, 50 and 200 clients following the same run (issue 16: p95 under 100 ms at 200 clients).

A chain of 40 steps (bench/workflows/ticker.py) runs in the server's own worker; every
client follows its events over SSE. A transition's `ts` is stamped just before its commit (the
engine commits transitions at once), so latency = arrival - ts on this machine's clock, over the
step_started/step_succeeded events (80 a run) committed after the client was connected.

The clients share the machine with the server. `--client sse` (httpx-sse, as an application
would read the stream) stamps an event once parsed, so a busy client process adds its own delay;
`--client raw` stamps each read of the socket as it happens and parses after the run ends, so
the figure is closer to the server's own latency. Both count the same events.

    python bench/serve_events.py                     # embedded PostgreSQL (or STATEPIPE_DATABASE_URL)
    python bench/serve_events.py --clients 1,50,200 --client raw

It works in its own database (statepipe_bench_serve, dropped and re-created)."""

from __future__ import annotations

import argparse
import asyncio
import bisect
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime
from pathlib import Path
from urllib.parse import urlsplit

import benchdb  # bench/benchdb.py: the scripts run from this folder
import httpx
from httpx_sse import aconnect_sse

ROOT = Path(__file__).resolve().parent.parent
BENCH_DB = "statepipe_bench_serve"
TICKER = ROOT / "bench" / "workflows" / "ticker.py"


def _database(url: str | None) -> str:
    return benchdb.fresh_database(url, BENCH_DB)


def _lag(line: bytes | str, received: float, since: float) -> float | None:
    """Receipt minus commit for a transition committed after `since`, else None."""
    e = json.loads(line)
    ts = datetime.fromisoformat(e["ts"]).timestamp()
    return received - ts if e["type"] in ("step_started", "step_succeeded") and ts > since else None


async def _follow(client: httpx.AsyncClient, url: str, ready: asyncio.Event, lags: list[float]) -> None:
    async with aconnect_sse(client, "GET", url) as source:
        ready.set()
        since = time.time()  # events from before this client was connected are catch-up, not lag
        async for sse in source.aiter_sse():
            if sse.event == "end":
                return
            if sse.event != "message" or not sse.data:
                continue
            lag = _lag(sse.data, time.time(), since)
            if lag is not None:
                lags.append(lag)


async def _clients(url: str, clients: int) -> list[float]:
    lags: list[float] = []
    limits = httpx.Limits(max_connections=clients + 5, max_keepalive_connections=clients + 5)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        ready = [asyncio.Event() for _ in range(clients)]
        await asyncio.gather(*(_follow(client, url, r, lags) for r in ready))
    return lags


FRAME = re.compile(rb"\ndata: (\{[^\n]*\})\n\n")  # the server's event frames: data is one JSON line


class _Raw(asyncio.Protocol):
    """One SSE stream over a bare socket: each read is stamped and kept, nothing parsed until
    the stream ends (the server closes it: Connection: close), so receipt is not delayed by
    the client's own work."""

    def __init__(self, request: bytes, done: asyncio.Future[None]) -> None:
        self.request, self.done = request, done
        self.data = bytearray()
        self.reads: list[tuple[int, float]] = []  # (bytes received so far, when)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        now = time.time()
        self.data += data
        self.reads.append((len(self.data), now))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(None)

    def lags(self) -> list[float]:
        """An event's receipt is the read that completed its frame; connected at the first read
        (the response's headers)."""
        ends = [n for n, _ in self.reads]
        since = self.reads[0][1] if self.reads else 0.0
        lags = []
        for frame in FRAME.finditer(self.data):
            lag = _lag(frame.group(1), self.reads[bisect.bisect_left(ends, frame.end())][1], since)
            if lag is not None:
                lags.append(lag)
        return lags


async def _raw_clients(url: str, clients: int) -> list[float]:
    parts = urlsplit(url)
    request = f"GET {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\nAccept: text/event-stream\r\nConnection: close\r\n\r\n"
    loop = asyncio.get_running_loop()
    streams = [_Raw(request.encode(), loop.create_future()) for _ in range(clients)]
    for stream in streams:
        await loop.create_connection(lambda stream=stream: stream, parts.hostname, parts.port)
    await asyncio.gather(*(stream.done for stream in streams))
    return [lag for stream in streams for lag in stream.lags()]


def _process(url: str, clients: int, raw: bool) -> list[float]:
    return asyncio.run(_raw_clients(url, clients) if raw else _clients(url, clients))


def _round(base: str, env: dict[str, str], clients: int, procs: int, raw: bool) -> list[float]:
    """One run followed by `clients` SSE clients spread over `procs` processes: in one process,
    parsing 200 streams is itself the bottleneck of the measurement."""
    created = subprocess.run(
        [sys.executable, "-m", "statepipe", "run", str(TICKER), "--detach"], env=env, capture_output=True, text=True, check=True
    )
    url = f"{base}/api/runs/{created.stdout.strip().split()[-1]}/events"
    shares = [n for n in (clients // procs + (1 if i < clients % procs else 0) for i in range(procs)) if n]
    with ProcessPoolExecutor(len(shares)) as pool:
        parts = pool.map(_process, [url] * len(shares), shares, [raw] * len(shares))
        return [lag for part in parts for lag in part]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", default="1,50,200")
    parser.add_argument("--procs", type=int, default=2, help="client processes")
    parser.add_argument("--client", choices=("sse", "raw"), default="sse", help="httpx-sse, or stamps at the socket (see above)")
    parser.add_argument("--database-url", default=os.environ.get("STATEPIPE_DATABASE_URL"))
    args = parser.parse_args()
    url = _database(args.database_url)
    work = tempfile.TemporaryDirectory(prefix="statepipe-bench-")  # the runs' event files
    env = {**os.environ, "STATEPIPE_DATABASE_URL": url, "STATEPIPE_OUTPUT_DIR": work.name}
    server, base = benchdb.serve(env)
    try:
        print("| clients | events received | p50 ms | p95 ms | max ms |")
        print("|---|---|---|---|---|")
        for n in [int(c) for c in args.clients.split(",")]:
            lags = sorted(_round(base, env, n, min(args.procs, n), args.client == "raw"))
            q = statistics.quantiles(lags, n=100)
            print(f"| {n} | {len(lags)} | {q[49] * 1000:.1f} | {q[94] * 1000:.1f} | {lags[-1] * 1000:.1f} |", flush=True)
    finally:
        server.terminate()
        server.wait(30)


if __name__ == "__main__":
    main()
