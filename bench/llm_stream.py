"""Streaming benchmark: one LLM step streaming 20,000 tokens as fast as a local OpenAI-compatible
server (tests/fake_openai.py) can send them.

Measures
  (a) how fast the streamed output is persisted: output events (rows) and tokens per second, and
      the transactions the writer used (statepipe.engine.writer.Writer.transactions), per 50 ms
      of streaming;
  (b) the delay from a token leaving the server (FakeOpenAI.chunk_times, time.monotonic()) to
      its appearing in `statepipe logs --follow` running in another process (its stdout lines
      timestamped on arrival). The writer merges tokens into fewer `output` events, so tokens
      are matched to events by cumulative character offset.

Targets (issue 4): p95 of (b) under 250 ms, and no more than one transaction per 50 ms per
streaming step.

    python bench/llm_stream.py                  # embedded PostgreSQL (or STATEPIPE_DATABASE_URL)
    python bench/llm_stream.py --tokens 5000 --database-url postgresql://...

It works in its own database (`statepipe_bench_llm`, dropped and re-created on the same server),
so the runs it makes never mix with a user's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # fake_openai lives with the tests

import benchdb  # noqa: E402 - bench/benchdb.py: the scripts run from this folder
import psycopg  # noqa: E402
from fake_openai import FakeOpenAI, Text  # noqa: E402
from psycopg import sql  # noqa: E402

from statepipe import (
    Workflow,  # noqa: E402
    llm,  # noqa: E402
)
from statepipe.definition.loader import Loaded  # noqa: E402
from statepipe.engine.context import StepContext  # noqa: E402
from statepipe.engine.runtime import Runtime  # noqa: E402
from statepipe.store.database import open_store, resolve_url  # noqa: E402

BENCH_DB = "statepipe_bench_llm"
MODEL = "bench-stream"
TOKEN_CHARS = 6  # every token is "%05d " : one SSE chunk each

wf = Workflow("llm_stream_bench", models=[MODEL])


@wf.step
def stream(ctx) -> int:
    return len(llm.text(ctx, "Count for me, as fast as you can.", model=MODEL))


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class Follower:
    """`statepipe logs RUN --follow` in another process; every stdout line stamped on arrival."""

    def __init__(self, run_id: str, db_url: str) -> None:
        env = dict(os.environ, STATEPIPE_DATABASE_URL=db_url)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "statepipe", "logs", run_id, "--follow"],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1,
        )
        self.lines: list[tuple[float, dict[str, Any]]] = []
        self.first = threading.Event()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            t = time.monotonic()
            if line.strip():
                self.lines.append((t, json.loads(line)))
                self.first.set()

    def wait(self, timeout: float) -> int:
        code = self.proc.wait(timeout=timeout)
        self.thread.join(timeout=10)
        return code


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[k]


def arrivals(events: list[tuple[float, int]], tokens: int) -> list[float]:
    """When each token (chars [k*L, (k+1)*L)) arrived: the time of the first of `events`
    ((time, characters) in stream order) whose cumulative text covers its last character."""
    out: list[float] = []
    end = 0
    for t, chars in events:
        end += chars
        while len(out) < tokens and (len(out) + 1) * TOKEN_CHARS <= end:
            out.append(t)
    if len(out) != tokens:
        raise SystemExit(f"only {len(out)} of {tokens} tokens arrived")
    return out


def stats_ms(delays: list[float]) -> dict[str, float]:
    return {q: round(percentile(delays, float(q)) * 1000, 1) for q in ("50", "95", "99")} | {"max": round(max(delays) * 1000, 1)}


class Server:
    """The fake OpenAI server answering every request with the same streamed reply: in this
    process (as the tests run it), or with `--server-process` in a child process of its own, as
    a real provider would be (its Python then does not compete with statepipe's for the GIL)."""

    def __init__(self, reply: Text, own_process: bool) -> None:
        self.own_process = own_process
        if own_process:
            import multiprocessing

            ctx = multiprocessing.get_context("spawn")
            self._queue = ctx.Queue()
            self._done = ctx.Event()
            self._proc = ctx.Process(target=_serve, args=(reply, self._queue, self._done), daemon=True)
            self._proc.start()
            self.base_url = self._queue.get(timeout=60)
        else:
            self._fake = FakeOpenAI()
            self._fake.always(reply)
            self.base_url = self._fake.base_url

    def close(self) -> list[tuple[int, float]]:
        """Stop it; (request index, time it was written) of every content chunk it sent."""
        if self.own_process:
            self._done.set()
            chunks = self._queue.get(timeout=60)
            self._proc.join(timeout=10)
            return chunks
        self._fake.close()
        return [(c.request_index, c.t) for c in self._fake.chunks]


def _serve(reply: Text, queue: Any, done: Any) -> None:
    sys.path.insert(0, str(ROOT / "tests"))
    from fake_openai import FakeOpenAI as Fake

    fake = Fake()
    fake.always(reply)
    queue.put(fake.base_url)
    done.wait()
    queue.put([(c.request_index, c.t) for c in fake.chunks])  # time.monotonic(): one clock per machine
    fake.close()


def client_baseline(content: str, own_process: bool) -> dict[str, Any]:
    """The openai client alone reading the same stream (no statepipe): how far behind the server
    the client's own parsing falls when tokens are sent as fast as the server can write them."""
    import openai

    server = Server(Text(content, chunk_size=TOKEN_CHARS), own_process)
    client = openai.OpenAI(base_url=server.base_url, api_key="bench", max_retries=0)
    got: list[tuple[float, int]] = []
    began = time.monotonic()
    for chunk in client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "go"}], stream=True):
        if chunk.choices and chunk.choices[0].delta.content:
            got.append((time.monotonic(), len(chunk.choices[0].delta.content)))
    elapsed = time.monotonic() - began
    client.close()
    sent = [t for _, t in server.close()]
    lags = [a - s for a, s in zip(arrivals(got, len(sent)), sent)]
    return {"client_read_s": round(elapsed, 3), "server_send_s": round(sent[-1] - sent[0], 3), "lag_ms": stats_ms(lags)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tokens", type=int, default=20_000)
    p.add_argument("--delay", type=float, default=0.0, help="seconds between tokens (default 0: as fast as the server can send)")
    p.add_argument("--no-baseline", action="store_true", help="skip timing the openai client alone")
    p.add_argument("--server-process", action="store_true", help="run the fake server in a process of its own")
    p.add_argument("--database-url", default=None, help="PostgreSQL server URL (default: STATEPIPE_DATABASE_URL, else embedded)")
    args = p.parse_args(argv)

    server_url = resolve_url(args.database_url or os.environ.get("STATEPIPE_DATABASE_URL") or None)
    db_url = benchdb.fresh_database(server_url, BENCH_DB)
    store = open_store(db_url, max_size=8)
    content = "".join(f"{i % 100_000:05d} " for i in range(args.tokens))
    baseline = None if args.no_baseline or args.delay else client_baseline(content, args.server_process)

    server = Server(Text(content, chunk_size=TOKEN_CHARS, delay=args.delay, usage=(12, args.tokens)), args.server_process)
    os.environ["OPENAI_BASE_URL"] = server.base_url
    os.environ["OPENAI_API_KEY"] = "bench"

    # when each delta reached statepipe: the step context's emit, stamped (statepipe unchanged)
    received: list[tuple[float, int]] = []
    plain_emit = StepContext.emit

    def stamped_emit(self: StepContext, text: str) -> None:
        received.append((time.monotonic(), len(text)))
        plain_emit(self, text)

    StepContext.emit = stamped_emit  # type: ignore[method-assign]

    runtime = Runtime(store)
    commits: list[tuple[float, int, int]] = []  # (time, output events, chars) per transaction with output

    def on_commit(events: list[Any]) -> None:
        outs = [e for e in events if e.type == "output"]
        if outs:
            commits.append((time.monotonic(), len(outs), sum(len(e.data["text"]) for e in outs)))

    runtime.listen(on_commit)
    loaded = Loaded(wf, f"{Path(__file__).resolve()}:wf")
    run_id = runtime.create_run(loaded, {})
    follower = Follower(run_id, db_url)
    if not follower.first.wait(30):  # connected, backlog printed: now stream
        raise SystemExit("the follower printed nothing")
    log(f"run {run_id}: streaming {args.tokens:,} tokens")

    tx_before = runtime.writer.transactions
    began = time.monotonic()
    outcome = asyncio.run(runtime.execute(run_id, loaded))
    runtime.writer.flush()
    elapsed = time.monotonic() - began
    transactions = runtime.writer.transactions - tx_before
    code = follower.wait(timeout=60)
    sent = [t for _, t in server.close()]
    StepContext.emit = plain_emit  # type: ignore[method-assign]
    if outcome.state != "succeeded" or outcome.result != len(content) or code != 0:
        raise SystemExit(f"run {outcome.state} (result {outcome.result}), follower exit {code}")

    n = len(sent)
    assert n == args.tokens
    stored = [e for e in store.events_after(run_id, 0, 1_000_000) if e.type == "output"]
    assert "".join(e.data["text"] for e in stored) == content, "stored text differs from what was sent"
    followed = [(t, e["data"]["text"]) for t, e in follower.lines if e["type"] == "output" and e["attempt"] == 1]
    assert "".join(text for _, text in followed) == content, "followed text differs from what was sent"

    at_client = arrivals(received, n)
    at_commit = arrivals([(t, chars) for t, _, chars in commits], n)
    at_follow = arrivals([(t, len(text)) for t, text in followed], n)
    window = at_commit[-1] - at_client[0]  # first token received .. last token committed
    gaps = [b[0] - a[0] for a, b in zip(commits, commits[1:])]
    figures: dict[str, Any] = {
        "tokens": n,
        "delay_between_tokens_s": args.delay,
        "server_process": args.server_process,
        "server_send_s": round(sent[-1] - sent[0], 3),
        "client_receive_s": round(at_client[-1] - at_client[0], 3),
        "streaming_window_s": round(window, 3),
        "run_elapsed_s": round(elapsed, 3),
        "output_events_persisted": len(stored),
        "output_events_per_s": round(len(stored) / window, 1),
        "tokens_persisted_per_s": round(n / window, 1),
        "transactions_total": transactions,
        "transactions_with_output": len(commits),
        "transactions_per_50ms": round(len(commits) / (window / 0.05), 3),
        "output_commit_gap_ms": {"min": round(min(gaps) * 1000, 1), "median": round(statistics.median(gaps) * 1000, 1)} if gaps else None,
        "sent_to_follow_ms": stats_ms([f - s for f, s in zip(at_follow, sent)]),
        "received_to_commit_ms": stats_ms([c - r for c, r in zip(at_commit, at_client)]),
        "received_to_follow_ms": stats_ms([f - r for f, r in zip(at_follow, at_client)]),
        "sent_to_received_ms": stats_ms([r - s for r, s in zip(at_client, sent)]),
        "baseline_openai_client_alone": baseline,
    }
    ok_latency = figures["sent_to_follow_ms"]["95"] < 250
    ok_tx = figures["transactions_per_50ms"] <= 1.0

    def line(label: str, ms: dict[str, float]) -> str:
        return f"  {label:<44} p50 {ms['50']:>7} ms  p95 {ms['95']:>7} ms  p99 {ms['99']:>7} ms  max {ms['max']:>7} ms"

    where = "in a process of its own" if args.server_process else "in this process"
    print(f"{n:,} tokens, {args.delay * 1000:g} ms apart, fake server {where}: it wrote them in {figures['server_send_s']} s, "
          f"statepipe received them in {figures['client_receive_s']} s")
    print(f"(a) persisted: {len(stored):,} output events in {figures['streaming_window_s']} s "
          f"({figures['output_events_per_s']:,} events/s carrying {figures['tokens_persisted_per_s']:,} tokens/s)")
    gap = figures["output_commit_gap_ms"] or {"min": "-", "median": "-"}
    print(f"    writer transactions: {transactions} in all, {len(commits)} with output = {figures['transactions_per_50ms']} "
          f"per 50 ms of streaming (target <= 1: {'met' if ok_tx else 'MISSED'}); gap between them min {gap['min']} ms, "
          f"median {gap['median']} ms")
    print("(b) delays per token:")
    print(line("left the server -> `logs --follow` (other proc)", figures["sent_to_follow_ms"])
          + f"   target p95 < 250 ms: {'met' if ok_latency else 'MISSED'}")
    print(line("left the server -> reached statepipe (emit)", figures["sent_to_received_ms"]))
    print(line("reached statepipe -> committed", figures["received_to_commit_ms"]))
    print(line("reached statepipe -> `logs --follow`", figures["received_to_follow_ms"]))
    if baseline:
        print(line("baseline: openai client alone, server -> client", baseline["lag_ms"])
              + f"   (client read {n:,} chunks in {baseline['client_read_s']} s)")
    print(json.dumps(figures))

    runtime._closing.set()
    if runtime._control is not None:
        runtime._control.join(timeout=3)  # its LISTEN connection ends before the pool closes
    runtime.writer.close()
    store.pool.close()
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(BENCH_DB)))
    return 0 if ok_latency and ok_tx else 1


if __name__ == "__main__":
    raise SystemExit(main())
