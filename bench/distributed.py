"""Distributed fan-outs (issue 18): what a child costs when any worker may claim it, against the
same fan-out run in-process. One run of bench/workflows/spread_bench.py runs the fan-out twice,
in-process (`local`) then distributed (`spread`); each fan-out's time is its parent step's,
from its start to its join. `--workers K` starts K `statepipe worker` processes first (0: the
run's own process claims the children alone).

    python bench/distributed.py --width 2000 --workers 0,2
    python bench/distributed.py --width 200 --burn-ms 20 --workers 2 --children 1

Embedded PostgreSQL (or STATEPIPE_DATABASE_URL), in a database of its own."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import benchdb  # bench/benchdb.py: the scripts run from this folder

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from statepipe.store.database import open_store  # noqa: E402

WORKFLOW = str(ROOT / "bench" / "workflows" / "spread_bench.py")


OUTPUT = tempfile.TemporaryDirectory(prefix="statepipe-bench-")  # the runs' event files


def statepipe(url: str, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "STATEPIPE_DATABASE_URL": url, "STATEPIPE_OUTPUT_DIR": OUTPUT.name}
    return subprocess.Popen([sys.executable, "-m", "statepipe", *args], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)


def measure(url: str, width: int, burn_ms: float, workers: int, children: int) -> tuple[float, float, set[str]]:
    """Seconds per child of the in-process and of the distributed fan-out, and the processes
    that ran distributed children."""
    started = [statepipe(url, "worker", "--children", str(children)) for _ in range(workers)]
    try:
        time.sleep(1.0 if workers else 0)  # the workers are up and listening
        args = ["run", WORKFLOW, "-i", f"width={width}", "-i", f"burn_ms={burn_ms}"]
        proc = statepipe(url, *args, *(["--detach"] if workers else []))
        out, _ = proc.communicate(timeout=3600)
        assert proc.returncode == 0, out[-500:]
        store = open_store(url)
        try:
            run_id = store.list_runs(limit=1)[0].id
            while store.get_run(run_id).state not in ("succeeded", "failed"):
                time.sleep(0.1)
            assert store.get_run(run_id).state == "succeeded"
            snap = store.snapshot(run_id)
            parents = {s.name: s for s in snap.parents()}
            per = [
                (parents[n].finished_at - parents[n].started_at).total_seconds() / width  # type: ignore[operator]
                for n in ("local", "spread")
            ]
            ran = {a.worker or "" for s in snap.steps if s.name == "spread" and s.item for a in s.attempts}
        finally:
            store.pool.close()
        return per[0], per[1], ran
    finally:
        for w in started:
            w.terminate()
        for w in started:
            w.wait(timeout=60)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--width", type=int, default=2000)
    ap.add_argument("--burn-ms", type=float, default=0.0, help="CPU time each child computes (0: trivial)")
    ap.add_argument("--workers", default="0,2", help="worker processes started, comma-separated cases")
    ap.add_argument("--children", type=int, default=64, help="each worker's --children (its children at once)")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    url = benchdb.fresh_database(os.environ.get("STATEPIPE_DATABASE_URL"), "statepipe_bench_distributed")
    print(f"width {args.width}, burn {args.burn_ms:g} ms a child, workers' --children {args.children}, {os.cpu_count()} CPUs;"
          f" median of {args.repeat}")
    print(f"{'workers':>8} {'in-process us/child':>20} {'distributed us/child':>21} {'ratio':>6} {'processes':>10}")
    for workers in (int(w) for w in args.workers.split(",")):
        rows = sorted((measure(url, args.width, args.burn_ms, workers, args.children) for _ in range(args.repeat)),
                      key=lambda r: r[1])
        local, spread, ran = rows[len(rows) // 2]
        print(f"{workers:>8} {local * 1e6:>20.0f} {spread * 1e6:>21.0f} {spread / local:>6.2f} {len(ran):>10}")


if __name__ == "__main__":
    main()
