"""`statepipe serve`'s event streams (issue 16): resumable Server-Sent Events and NDJSON over a
real uvicorn server on a free local port, read with real HTTP clients. Reconnecting with the
last seq seen yields exactly the rest of the run's events, in order, without duplicates."""

from __future__ import annotations

import json
import random
from typing import Any

import httpx
from conftest import workflow_path
from httpx_sse import connect_sse

CRASHY = workflow_path("crashy")


def _start(cli: Any, *inputs: str) -> str:
    done = cli("run", CRASHY, "--detach", *(a for i in inputs for a in ("-i", i)))
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().split()[-1]


def _frames(source: Any) -> Any:
    """The stream's events, its keep-alive comments left out (httpx-sse hands them on empty)."""
    return (sse for sse in source.iter_sse() if sse.data or sse.event not in ("message", ""))


def _stored(cli: Any, run_id: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in cli("logs", run_id).stdout.splitlines()]


def test_an_sse_stream_gives_every_event_with_its_seq_as_id_and_ends_with_the_run(cli, server):
    run_id = _start(cli, "pause=0.2", "items=3")
    seen: list[dict[str, Any]] = []
    end = None
    with httpx.Client(timeout=60) as client, connect_sse(client, "GET", f"{server.url}/api/runs/{run_id}/events") as source:
        assert source.response.headers["content-type"].startswith("text/event-stream")
        assert source.response.headers["x-accel-buffering"] == "no"
        for sse in _frames(source):
            if sse.event == "end":
                end = json.loads(sse.data)
                break
            event = json.loads(sse.data)
            assert sse.id == str(event["seq"])
            seen.append(event)
    assert end == {"state": "succeeded"}
    assert seen == _stored(cli, run_id)


def test_a_dropped_sse_stream_resumed_with_last_event_id_misses_and_repeats_nothing(cli, server):
    run_id = _start(cli, "pause=0.3", "items=4")
    seen: list[dict[str, Any]] = []
    last = None
    ended = False
    drops = 0
    with httpx.Client(timeout=60) as client:
        while not ended:
            headers = {"Last-Event-ID": last} if last else {}
            stop_after = random.randint(1, 6)
            with connect_sse(client, "GET", f"{server.url}/api/runs/{run_id}/events", headers=headers) as source:
                for n, sse in enumerate(_frames(source), 1):
                    if sse.event == "end":
                        ended = True
                        break
                    seen.append(json.loads(sse.data))
                    last = sse.id
                    if n >= stop_after:  # drop the connection at a random event
                        drops += 1
                        break
    assert drops >= 2
    assert [e["seq"] for e in seen] == list(range(1, len(seen) + 1))
    assert seen == _stored(cli, run_id)


def test_ndjson_gives_the_lines_of_statepipe_logs_and_resumes_from_after(cli, server):
    run_id = _start(cli, "pause=0.1", "items=2")
    with httpx.Client(timeout=60) as client:
        first = client.get(f"{server.url}/api/runs/{run_id}/events", params={"format": "ndjson"})
        assert first.headers["content-type"].startswith("application/x-ndjson")
        lines = first.text.splitlines()
        logs = cli("logs", run_id).stdout.splitlines()
        assert lines == logs
        tail = client.get(f"{server.url}/api/runs/{run_id}/events", params={"after": 5}, headers={"Accept": "application/x-ndjson"})
        assert tail.text.splitlines() == logs[5:]


def test_streams_survive_a_kill_9_of_the_server_and_a_reconnect_misses_nothing(cli, server):
    run_id = _start(cli, "pause=0.5", "items=4")
    seen: list[dict[str, Any]] = []
    last = None
    with httpx.Client(timeout=60) as client:
        with connect_sse(client, "GET", f"{server.url}/api/runs/{run_id}/events") as source:
            for sse in _frames(source):
                seen.append(json.loads(sse.data))
                last = sse.id
                if len(seen) >= 8:
                    break
        server.restart()  # kill -9, then start again on the same port
        with connect_sse(client, "GET", f"{server.url}/api/runs/{run_id}/events", headers={"Last-Event-ID": last or "0"}) as source:
            for sse in _frames(source):
                if sse.event == "end":
                    assert json.loads(sse.data) == {"state": "succeeded"}
                    break
                if sse.event == "interrupted":  # the server's own worker died with it
                    continue
                seen.append(json.loads(sse.data))
    assert seen == _stored(cli, run_id)


def _connections(db_url: str) -> int:
    import psycopg

    with psycopg.connect(db_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchone()
    return int(row[0]) if row else 0


def test_200_concurrent_stream_clients_all_get_every_event_over_a_bounded_number_of_connections(cli, server, db_url):
    import asyncio

    from httpx_sse import aconnect_sse

    run_id = _start(cli, "pause=2", "items=3")
    clients = 200
    peak = 0

    async def one(client: httpx.AsyncClient, opened: asyncio.Event) -> list[dict[str, Any]]:
        got: list[dict[str, Any]] = []
        async with aconnect_sse(client, "GET", f"{server.url}/api/runs/{run_id}/events") as source:
            opened.set()
            async for sse in source.aiter_sse():
                if sse.event == "end":
                    return got
                if sse.data and sse.event == "message":
                    got.append(json.loads(sse.data))
        raise AssertionError("the stream closed without an end event")

    async def main() -> list[list[dict[str, Any]]]:
        nonlocal peak
        limits = httpx.Limits(max_connections=clients + 10, max_keepalive_connections=clients + 10)
        async with httpx.AsyncClient(timeout=120, limits=limits) as client:
            opened = [asyncio.Event() for _ in range(clients)]
            tasks = [asyncio.create_task(one(client, o)) for o in opened]
            await asyncio.wait_for(asyncio.gather(*(o.wait() for o in opened)), 60)
            while not all(t.done() for t in tasks):  # every client connected: count the server's connections
                peak = max(peak, await asyncio.to_thread(_connections, db_url))
                await asyncio.sleep(0.5)
            return [t.result() for t in tasks]

    results = asyncio.run(main())
    stored = _stored(cli, run_id)
    assert all(r == stored for r in results)
    print(f"{clients} clients; the server held at most {peak} database connections")
    assert 0 < peak <= 20  # the pool, the one LISTEN, the worker's: not one per client
