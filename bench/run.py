"""statepipe benchmark (BENCH.md): what durability costs, against the floor on the same PostgreSQL.

    python bench/run.py [--rounds 3] [--only W1,W2] [--database-url URL]

Runs W1-W4 with the floor and with statepipe, interleaved per round, checks every result and
the persisted step rows, prints a Markdown table and writes the raw samples to
bench/results/<timestamp>.json. Progress goes to stderr, the report to stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import workloads as wl
from systems import BenchError, Floor, Statepipe, System, server_settings

from statepipe.store.database import resolve_url

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
SYSTEMS = ("floor", "statepipe")
WORKLOADS = ("W1", "W2", "W3", "W4")
TITLES = {
    "W1": "W1 sequential (20-step chain)",
    "W2": "W2 fan-out (100 × 50 ms)",
    "W3": "W3 big outputs (5 × ~1 MB)",
    "W4": "W4 many runs (200 × 5 steps, 20 at a time)",
}
# connections / threads: the floor as BENCH.md defines it; statepipe gets as many connections
# as the widest floor workload that is not W2 (W2's floor needs one per branch).
FLOOR_CONNECTIONS = 100
STATEPIPE_CONNECTIONS = 20
CLI_REPEATS = 5


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- timing one system on one workload -------------------------------------------------------


@dataclass(frozen=True)
class Spec:
    """A workload run in-process: `warmup` untimed then `reps` timed workflows, one after another."""

    warmup: int
    reps: int
    run: Callable[[System, int], Any]
    expected: Callable[[int], Any]


SPECS = {
    "W1": Spec(2, 30, lambda s, k: s.w1(k), lambda k: wl.chain_expected(k, wl.W1_STEPS)),
    "W2": Spec(1, 5, lambda s, k: s.w2(k), wl.w2_expected),
    "W3": Spec(1, 10, lambda s, k: s.w3(k), lambda k: wl.chain_result(wl.w3_step, wl.w3_input(k), wl.W3_STEPS)),
}
ROWS = {"floor": wl.FLOOR_ROWS, "statepipe": wl.STATEPIPE_ROWS}


def check(system: str, workload: str, k: int, got: Any, expected: Any) -> None:
    if got != expected:
        shown = json.dumps(got, default=str)
        raise BenchError(f"{system} {workload} workflow {k}: wrong result {shown[:300]}")


def check_rows(system: System, workload: str, ids: Sequence[str]) -> dict[str, int]:
    expected = len(ids) * ROWS[system.name][workload]
    found = system.count_rows(ids)
    if found != expected:
        raise BenchError(f"{system.name} {workload}: {found} step rows persisted, expected {expected}")
    return {"rows": found, "expected_rows": expected}


class Counter:
    """Distinct workflow numbers, so every workflow's inputs and outputs differ."""

    def __init__(self, start: int = 0) -> None:
        self.k = start

    def take(self, n: int = 1) -> int:
        first = self.k
        self.k += n
        return first


def time_in_process(system: System, workload: str, ks: Counter) -> tuple[list[float], dict[str, int]]:
    spec = SPECS[workload]
    made_before = len(system.made)
    for _ in range(spec.warmup):
        k = ks.take()
        check(system.name, workload, k, spec.run(system, k), spec.expected(k))
    samples = []
    for _ in range(spec.reps):
        k = ks.take()
        expected = spec.expected(k)  # computed before the clock starts
        start = time.perf_counter()
        got = spec.run(system, k)
        check(system.name, workload, k, got, expected)
        samples.append(time.perf_counter() - start)
    return samples, check_rows(system, workload, system.made[made_before:])


# -- W4: one fresh process per system and round ----------------------------------------------


def w4_child(system_name: str, url: str) -> dict[str, Any]:
    """One W4 process: set up, one warm-up batch of 20, one timed batch of 200, count rows."""
    system: System
    if system_name == "floor":
        system = Floor(url, connections=wl.W4_CONCURRENCY, threads=wl.W4_CONCURRENCY)
    else:
        system = Statepipe(url, connections=STATEPIPE_CONNECTIONS)
    try:
        ks = Counter()
        warm_k = ks.take(wl.W4_WARMUP_RUNS)
        start = time.perf_counter()
        got = system.w4_batch(warm_k, wl.W4_WARMUP_RUNS)
        warmup_s = time.perf_counter() - start
        for i, result in enumerate(got):
            check(system.name, "W4", warm_k + i, result, wl.chain_expected(warm_k + i, wl.W4_STEPS))
        first_k = ks.take(wl.W4_RUNS)
        expected = [wl.chain_expected(first_k + i, wl.W4_STEPS) for i in range(wl.W4_RUNS)]
        start = time.perf_counter()
        got = system.w4_batch(first_k, wl.W4_RUNS)
        for i, result in enumerate(got):
            check(system.name, "W4", first_k + i, result, expected[i])
        batch_s = time.perf_counter() - start
        rows = check_rows(system, "W4", system.made)
    finally:
        system.close()
    return {"system": system_name, "warmup_s": warmup_s, "batch_s": batch_s, "phases_s": system.phases, **rows}


def time_w4(system_name: str, url: str) -> tuple[list[float], dict[str, Any]]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--w4-child", system_name, "--database-url", url]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise BenchError(f"W4 {system_name} process failed:\n{proc.stderr.strip()[-2000:]}")
    report: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return [report["batch_s"]], report


# -- the CLI ---------------------------------------------------------------------------------


def statepipe_command() -> str | None:
    beside = Path(sys.executable).parent / "statepipe"
    return str(beside) if beside.exists() else shutil.which("statepipe")


def wall(cmd: Sequence[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, env=env, timeout=60)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        last = (proc.stderr.strip() or proc.stdout.strip() or f"exit {proc.returncode}").splitlines()[-1]
        raise BenchError(f"exit {proc.returncode}: {last}")
    return elapsed


def time_cli(runs: dict[str, str], database_url: str | None) -> dict[str, Any]:
    """Wall time of `statepipe list` / `statepipe inspect <id>` with the server up; skipped with a
    note when the command is missing or fails."""
    # Bytecode caching on, as in any installed environment (some shells here disable it).
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    if database_url:
        env["STATEPIPE_DATABASE_URL"] = database_url
    out: dict[str, Any] = {
        "python -c pass": statistics.median(wall([sys.executable, "-c", "pass"], env) for _ in range(CLI_REPEATS))
    }
    exe = statepipe_command()
    if exe is None:
        return {**out, "note": "no `statepipe` command installed; CLI timing skipped"}
    commands = {"statepipe list": [exe, "list"]}
    for workload, run_id in runs.items():
        commands[f"statepipe inspect <{workload} run>"] = [exe, "inspect", run_id]
    notes = []
    for label, cmd in commands.items():
        try:
            wall(cmd, env)  # once untimed: page cache, and does it work at all?
            out[label] = statistics.median(wall(cmd, env) for _ in range(CLI_REPEATS))
        except (BenchError, subprocess.TimeoutExpired, OSError) as exc:
            notes.append(f"`{label}` skipped ({exc})")
    if notes:
        out["note"] = "; ".join(notes)
    return out


# -- summary and report ----------------------------------------------------------------------


@dataclass
class Summary:
    median: float  # median of the round medians
    low: float  # lowest and highest round median: the spread
    high: float


def summarize(round_medians: Sequence[float]) -> Summary:
    return Summary(statistics.median(round_medians), min(round_medians), max(round_medians))


@dataclass
class Result:
    samples: dict[str, list[list[float]]] = field(default_factory=dict)  # system -> rounds -> seconds
    details: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # system -> per round

    def round_medians(self, system: str) -> list[float]:
        return [statistics.median(r) for r in self.samples[system]]

    def summary(self, system: str) -> Summary:
        return summarize(self.round_medians(system))

    def ratio(self) -> Summary:
        """Per-round ratios pair measurements taken minutes apart at most; their median is the
        figure least moved by a noisy machine."""
        pairs = zip(self.round_medians("statepipe"), self.round_medians("floor"))
        return summarize([s / f for s, f in pairs])


def ms(seconds: float) -> str:
    value = seconds * 1000
    return f"{value:.0f} ms" if value >= 100 else f"{value:.1f} ms" if value >= 10 else f"{value:.2f} ms"


def cell(s: Summary) -> str:
    return f"{ms(s.median)} ({ms(s.low)}–{ms(s.high)})"


def derived(workload: str, res: Result) -> str:
    parts = []
    for name in SYSTEMS:
        t = res.summary(name).median
        if workload == "W1":
            parts.append(f"{name} {t / wl.W1_STEPS * 1000:.2f} ms/step, {wl.W1_STEPS / t:,.0f} steps/s")
        elif workload == "W2":
            parts.append(f"{name} {t / wl.W2_SLEEP_S:.2f}× the ideal 50 ms")
        elif workload == "W3":
            parts.append(f"{name} {t / wl.W3_STEPS * 1000:.0f} ms/step")
        else:
            parts.append(f"{name} {wl.W4_RUNS / t:,.0f} workflows/s")
    return "; ".join(parts)


def report(results: dict[str, Result], meta: dict[str, Any], cli: dict[str, Any] | None) -> str:
    settings = meta["settings"]
    lines = [
        (
            f"statepipe benchmark, {meta['rounds']} rounds, {meta['started']} on {meta['host']} "
            f"(PostgreSQL {settings['server_version']}, synchronous_commit={settings['synchronous_commit']}, "
            f"fsync={settings['fsync']})"
        ),
        "",
        "Median of round medians (lowest–highest round median); ratio = median of per-round statepipe/floor.",
        "",
        "| workload | floor | statepipe | ratio statepipe/floor | derived |",
        "|---|---|---|---|---|",
    ]
    for w, res in results.items():
        r = res.ratio()
        lines.append(
            f"| {TITLES[w]} | {cell(res.summary('floor'))} | {cell(res.summary('statepipe'))} "
            f"| **{r.median:.2f}×** ({r.low:.2f}–{r.high:.2f}) | {derived(w, res)} |"
        )
    lines += ["", "Step rows persisted (checked after each timed loop, warm-ups included):"]
    for w, res in results.items():
        counts = ", ".join(
            f"{name} {sum(d['rows'] for d in res.details[name]):,}/{sum(d['expected_rows'] for d in res.details[name]):,}"
            for name in SYSTEMS
        )
        lines.append(f"- {w}: {counts}")
    if cli is not None:
        lines += ["", f"CLI wall time, median of {CLI_REPEATS} (server already up):", ""]
        lines += ["| command | wall |", "|---|---|"]
        lines += [f"| `{k}` | {ms(v)} |" for k, v in cli.items() if k != "note"]
        if "note" in cli:
            lines += ["", f"Note: {cli['note']}"]
    return "\n".join(lines)


# -- main ------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="statepipe benchmark: W1-W4 against the plain-psycopg floor (BENCH.md)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved floor/statepipe rounds (at least 3 to report)")
    p.add_argument("--only", default=",".join(WORKLOADS), help="comma-separated workloads, e.g. W1,W2")
    p.add_argument(
        "--database-url", default=None, help="PostgreSQL URL (default: STATEPIPE_DATABASE_URL, else embedded)"
    )
    p.add_argument("--no-cli", action="store_true", help="skip timing the statepipe CLI")
    p.add_argument("--w4-child", choices=SYSTEMS, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.only = [w.strip().upper() for w in args.only.split(",") if w.strip()]
    unknown = sorted(set(args.only) - set(WORKLOADS))
    if unknown:
        p.error(f"unknown workload(s): {', '.join(unknown)}; choose from {', '.join(WORKLOADS)}")
    if args.rounds < 1:
        p.error("--rounds must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    explicit_url = args.database_url or os.environ.get("STATEPIPE_DATABASE_URL") or None
    url = resolve_url(explicit_url)  # starts the embedded server when needed: before any timing
    if args.w4_child:
        print(json.dumps(w4_child(args.w4_child, url)))
        return 0

    settings = server_settings(url)
    log(f"synchronous_commit = {settings['synchronous_commit']}, fsync = {settings['fsync']}")
    if settings["synchronous_commit"] != "on":
        log("error: synchronous_commit must be on for the benchmark (BENCH.md)")
        return 2
    if args.rounds < 3:
        log(f"warning: {args.rounds} round(s); BENCH.md asks for at least 3")
    started = datetime.now(UTC)
    meta: dict[str, Any] = {
        "started": started.strftime("%Y-%m-%d %H:%M UTC"),
        "host": f"{platform.node()} ({os.cpu_count()} CPUs, Python {platform.python_version()})",
        "rounds": args.rounds,
        "workloads": args.only,
        "settings": settings,
        "connections": {"floor": FLOOR_CONNECTIONS, "statepipe": STATEPIPE_CONNECTIONS},
    }

    results = {w: Result({n: [] for n in SYSTEMS}, {n: [] for n in SYSTEMS}) for w in args.only}
    in_process = [w for w in args.only if w in SPECS]
    systems: dict[str, System] = {}
    if in_process:
        systems = {
            "floor": Floor(url, connections=FLOOR_CONNECTIONS, threads=wl.W2_BRANCHES),
            "statepipe": Statepipe(url, connections=STATEPIPE_CONNECTIONS),
        }
    ks = Counter()
    inspect_runs: dict[str, str] = {}  # a statepipe run per workload, for `statepipe inspect`
    try:
        for rnd in range(1, args.rounds + 1):
            for w in args.only:
                for name in SYSTEMS:  # interleaved: floor, statepipe, floor, statepipe, ...
                    if w == "W4":
                        samples, detail = time_w4(name, url)
                    else:
                        samples, detail = time_in_process(systems[name], w, ks)
                        inspect_runs[w] = systems[name].made[-1]
                    results[w].samples[name].append(samples)
                    results[w].details[name].append(detail)
                    log(f"round {rnd}/{args.rounds} {w} {name:9}: median {ms(statistics.median(samples))}")
        cli = None if args.no_cli else time_cli(inspect_runs, explicit_url)
    except BenchError as exc:
        log(f"benchmark failed: {exc}")
        return 1
    finally:
        for system in systems.values():
            system.close()

    text = report(results, meta, cli)
    print(text)
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"{started.strftime('%Y%m%dT%H%M%SZ')}.json"
    raw = {
        **meta,
        "results": {
            w: {
                "samples_s": res.samples,
                "details": res.details,
                "summary": {n: asdict(res.summary(n)) for n in SYSTEMS},
                "ratio": asdict(res.ratio()),
            }
            for w, res in results.items()
        },
        "cli_s": cli,
        "report": text,
    }
    out.write_text(json.dumps(raw, indent=2) + "\n")
    log(f"raw samples: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
