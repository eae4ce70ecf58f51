"""A workflow for fault injection: parallel branches, a fan-out, transient failures, compensation.

    seed ──┬── flaky   (retries=2; fails on its 1st attempt when `transient`)  ──┐
           ├── branch                                                         ├── join
           └── fan[i]  (map_over seed, concurrency 3, retries=1; item 1 fails  ┘
                        on its 1st attempt when `transient`)

Every result is a pure function of the input, so a run that was killed, resumed, drained or taken
over must end with exactly the result of an uninterrupted run (see `expected_result`).

Inputs (all optional):
- `items`: how many items seed makes (the fan-out width), default 5;
- `pause`: seconds each step takes, streaming output four times meanwhile (so a stopping run
  interrupts it at the next emit);
- `slow`: {step name: seconds} for steps whose FIRST attempt takes longer (a provider that
  hangs once): a test can stop that attempt, and the retry or resume is quick again;
- `transient`: whether flaky and fan[1] fail on their first attempt (default true);
- `fail_at`: name of a step (seed, flaky, branch, fan, join) that raises NonRetryable: the run
  fails, and the completed steps are compensated;
- `log`: a file each compensation appends JSON lines to ("start" then "done"), so a test can
  check their order and that none was repeated;
- `comp_pause`: seconds each compensation takes between its "start" and "done" lines.
"""

import json
import time

from statepipe import NonRetryable, RetryPolicy, Workflow

wf = Workflow(
    "faulty",
    max_concurrency=8,
    retry=RetryPolicy(max_attempts=1, initial_interval=0.05, backoff="fixed"),
)


def _work(ctx, pause: float, label: str, slow) -> None:
    seconds = (slow or {}).get(ctx.step, pause) if ctx.attempt == 1 else pause
    for i in range(4):
        ctx.emit(f"{label} part {i}\n")
        time.sleep(seconds / 4)


def _fail_if_asked(name: str, fail_at: str) -> None:
    if fail_at == name:
        raise NonRetryable(f"{name} was asked to fail")


def _append(path: str, record: dict) -> None:
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record) + "\n")
        fh.flush()


def _compensation(name: str):
    def compensate(ctx, output, item, log=None, comp_pause=None):
        label = f"{name}[{ctx.item}]" if ctx.item else name
        if log:
            _append(log, {"event": "start", "step": label, "attempt": ctx.attempt, "output": output})
        deadline = time.monotonic() + float(comp_pause or 0)
        while time.monotonic() < deadline:
            ctx.checkpoint()
            time.sleep(0.02)
        if log:
            _append(log, {"event": "done", "step": label, "attempt": ctx.attempt})
        return {"undid": label}

    compensate.__name__ = f"undo_{name}"
    return compensate


@wf.step(compensate=_compensation("seed"))
def seed(ctx, items: int = 5, pause: float = 0.2, fail_at: str = "", slow=None) -> list[dict]:
    _work(ctx, pause, "seed", slow)
    _fail_if_asked("seed", fail_at)
    return [{"n": i, "label": f"item-{i}"} for i in range(items)]


@wf.step(retries=2, compensate=_compensation("flaky"))
def flaky(ctx, seed, pause: float = 0.2, transient: bool = True, fail_at: str = "", slow=None) -> int:
    _work(ctx, pause, "flaky", slow)
    _fail_if_asked("flaky", fail_at)
    if transient and ctx.attempt == 1:
        raise ConnectionError("flaky: transient failure on attempt 1")
    return sum(10 * x["n"] for x in seed)


@wf.step(compensate=_compensation("branch"))
def branch(ctx, seed, pause: float = 0.2, fail_at: str = "", slow=None) -> str:
    _work(ctx, pause, "branch", slow)
    _fail_if_asked("branch", fail_at)
    return "-".join(x["label"] for x in seed)


@wf.step(map_over=seed, concurrency=3, retries=1, compensate=_compensation("fan"))
def fan(ctx, item, pause: float = 0.2, transient: bool = True, fail_at: str = "", slow=None) -> dict:
    _work(ctx, pause, f"fan {item['n']}", slow)
    _fail_if_asked("fan", fail_at)
    if transient and item["n"] == 1 and ctx.attempt == 1:
        raise TimeoutError("fan[1]: transient failure on attempt 1")
    return {"n": item["n"], "square": item["n"] ** 2}


@wf.step
def join(ctx, flaky, branch, fan, pause: float = 0.2, fail_at: str = "", slow=None) -> dict:
    _work(ctx, pause, "join", slow)
    _fail_if_asked("join", fail_at)
    return {"flaky": flaky, "branch": branch, "squares": [f["square"] for f in fan]}


def expected_result(items: int = 5) -> dict:
    """join's output (the run's result), worked out without running anything."""
    return {
        "flaky": sum(10 * n for n in range(items)),
        "branch": "-".join(f"item-{n}" for n in range(items)),
        "squares": [n * n for n in range(items)],
    }
