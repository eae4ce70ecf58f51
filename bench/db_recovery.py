"""How soon runs move again once PostgreSQL is back after an outage (issue 22).

    python bench/db_recovery.py [--outages 1,20,40] [--pause 0.2]

Starts a PostgreSQL of its own (pgserver, in a temporary directory: the embedded server of
STATEPIPE_HOME is left alone), a `statepipe worker` and a `statepipe run` process, each executing
a chain of short steps. For each outage it stops the server, waits, starts it again and prints
the seconds from the server accepting connections to each run's next committed event. Takes
about a minute plus the outages.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))  # own_postgres lives with the tests that also take it down

from own_postgres import OwnPostgres, last_seqs  # noqa: E402

CHAIN = '''
import time

from statepipe import Workflow

wf = Workflow("recovery_chain")


def _body(i):
    def body(pause: float):
        time.sleep(pause)
        return i

    return body


_prev = None
for _i in range(1000):
    _prev = wf.step(_body(_i), name=f"s{_i}", after=[_prev] if _prev else [])
'''


def statepipe(server: OwnPostgres, *args: str, **popen: object) -> subprocess.Popen[str]:
    env = {**server.env, "STATEPIPE_DATABASE_URL": server.url}
    return subprocess.Popen([sys.executable, "-m", "statepipe", *args], cwd=REPO, env=env, text=True, **popen)  # type: ignore[call-overload]


def measure(server: OwnPostgres, chain: Path, outage: float, pause: float) -> tuple[float, float]:
    """Seconds from the server accepting connections to the next commit of the worker's run and
    of the `statepipe run` process's run."""
    enqueued = statepipe(server, "run", "--detach", str(chain), "-i", f"pause={pause}", stdout=subprocess.PIPE)
    out, _ = enqueued.communicate(timeout=60)
    worker_run = out.strip()
    events = chain.with_suffix(f".{outage:g}.jsonl")
    with events.open("w") as out_file:
        running = statepipe(server, "run", str(chain), "-i", f"pause={pause}", stdout=out_file, stderr=subprocess.DEVNULL)
    while not events.read_text().endswith("\n"):  # its first event names the run
        time.sleep(0.01)
    own_run = json.loads(events.read_text().splitlines()[0])["run_id"]
    runs = [worker_run, own_run]
    with psycopg.connect(server.url, autocommit=True) as conn:
        began = time.monotonic()
        while min(last_seqs(conn, runs)) < 12:  # both well under way
            if time.monotonic() > began + 120:
                raise SystemExit("the runs did not get under way in 120 s")
            time.sleep(0.05)
    server.stop()
    time.sleep(outage)
    accepted = server.start()
    recovered: list[float | None] = [None, None]
    with psycopg.connect(server.url, autocommit=True) as conn:
        seen = last_seqs(conn, runs)
        while None in recovered and time.monotonic() < accepted + 600:
            for i, seq in enumerate(last_seqs(conn, runs)):
                if recovered[i] is None and seq > seen[i]:
                    recovered[i] = time.monotonic() - accepted
            time.sleep(0.01)
    cancel = statepipe(server, "cancel", *runs, "--yes", stdout=subprocess.DEVNULL)
    cancel.wait(timeout=60)
    running.wait(timeout=60)
    return recovered[0] or float("nan"), recovered[1] or float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--outages", default="1,20,40", help="seconds the server stays down, comma-separated")
    parser.add_argument("--pause", type=float, default=0.2, help="seconds each step takes")
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="statepipe-recovery-"))
    chain = home / "recovery_chain.py"
    chain.write_text(CHAIN)
    server = OwnPostgres(home, os.environ)
    server.start()
    worker = statepipe(server, "worker", "--concurrency", "1", stderr=subprocess.DEVNULL)
    try:
        print("outage_s  worker_s  run_s  (seconds from PostgreSQL accepting connections to the next commit)")
        for outage in (float(o) for o in args.outages.split(",")):
            worker_s, run_s = measure(server, chain, outage, args.pause)
            print(f"{outage:8.0f}  {worker_s:8.2f}  {run_s:5.2f}", flush=True)
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.wait()
        server.stop()
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
