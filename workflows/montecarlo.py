"""Monte Carlo estimates in independent, seeded branches, combined at the end.

Each branch is CPU-bound pure Python with its own `random.Random(seed + k)`, so the result
depends only on the inputs: two runs with the same seed give identical numbers, and a branch
re-executed after a crash or a `rerun` reproduces exactly what it produced the first time.
The branches run as process steps (`process=True`), each in a process of its own: on threads
they would share one interpreter lock, and so one core.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from typing import Any

from statepipe import NonRetryable, StepContext, Workflow

wf = Workflow(
    "montecarlo",
    description="Seeded Monte Carlo estimates of pi, e and random-walk statistics, in parallel branches",
)

WALK_STEPS = 64  # even, so a walk can end back at the origin and the exact theory applies
PROGRESS_REPORTS = 10  # per branch: enough to watch, few enough to cost nothing


def _sample_count(samples: Any) -> int:
    """Inputs may arrive as strings from the command line; a bad count never improves on retry."""
    try:
        n = int(samples)
    except (TypeError, ValueError):
        raise NonRetryable(f"samples must be an integer, got {samples!r}") from None
    if n < 1:
        raise NonRetryable(f"samples must be at least 1, got {n}")
    return n


def _chunks(total: int) -> Iterator[tuple[int, int]]:
    """Split `total` samples into about PROGRESS_REPORTS chunks; yield (size, done_after)."""
    size = max(1, -(-total // PROGRESS_REPORTS))
    done = 0
    while done < total:
        n = min(size, total - done)
        done += n
        yield n, done


@wf.step(process=True)
def pi_estimate(ctx: StepContext, seed: int = 42, samples: int = 200_000) -> dict[str, Any]:
    """Estimate pi from the fraction of uniform points in the unit square inside the quarter circle."""
    n = _sample_count(samples)
    rng = random.Random(int(seed) + 1)
    inside = 0
    for size, done in _chunks(n):
        for _ in range(size):
            x, y = rng.random(), rng.random()
            if x * x + y * y <= 1.0:
                inside += 1
        ctx.progress(f"{done:,}/{n:,} points, pi ≈ {4 * inside / done:.5f}", done=done, total=n)
    p = inside / n
    return {"samples": n, "inside": inside, "estimate": 4 * p, "std_error": 4 * math.sqrt(p * (1 - p) / n)}


@wf.step(process=True)
def e_estimate(ctx: StepContext, seed: int = 42, samples: int = 200_000) -> dict[str, Any]:
    """Estimate e as the mean number of uniforms needed for their sum to exceed 1."""
    n = _sample_count(samples)
    rng = random.Random(int(seed) + 2)
    total = 0
    total_sq = 0
    for size, done in _chunks(n):
        for _ in range(size):
            s, k = 0.0, 0
            while s <= 1.0:
                s += rng.random()
                k += 1
            total += k
            total_sq += k * k
        ctx.progress(f"{done:,}/{n:,} trials, e ≈ {total / done:.5f}", done=done, total=n)
    mean = total / n
    variance = max(0.0, total_sq / n - mean * mean)
    return {"samples": n, "draws": total, "estimate": mean, "std_error": math.sqrt(variance / n)}


@wf.step(process=True)
def random_walk(ctx: StepContext, seed: int = 42, samples: int = 200_000) -> dict[str, Any]:
    """Simulate `samples` simple ±1 walks of WALK_STEPS steps; keep sums for the statistics."""
    n = _sample_count(samples)
    rng = random.Random(int(seed) + 3)
    sum_abs = 0
    sum_sq = 0
    at_origin = 0
    for size, done in _chunks(n):
        for _ in range(size):
            position = 0
            for _ in range(WALK_STEPS):
                position += 1 if rng.random() < 0.5 else -1
            sum_abs += abs(position)
            sum_sq += position * position
            at_origin += position == 0
        ctx.progress(f"{done:,}/{n:,} walks, <S²> ≈ {sum_sq / done:.3f}", done=done, total=n)
    return {"walks": n, "steps": WALK_STEPS, "sum_abs": sum_abs, "sum_sq": sum_sq, "at_origin": at_origin}


def _compare(estimate: float, theory: float, std_error: float | None = None) -> dict[str, Any]:
    """One estimate next to its exact value; the z-score says whether the gap is plausible noise."""
    out: dict[str, Any] = {
        "estimate": round(estimate, 6),
        "theory": round(theory, 6),
        "error": round(estimate - theory, 6),
    }
    if std_error:
        out["std_error"] = round(std_error, 6)
        out["z"] = round((estimate - theory) / std_error, 3)
    return out


@wf.step
def combine(
    pi_estimate: dict[str, Any], e_estimate: dict[str, Any], random_walk: dict[str, Any]
) -> dict[str, Any]:
    """Set every estimate against its exact value, so a reader sees at once how good each is."""
    steps, walks = random_walk["steps"], random_walk["walks"]
    p_origin = math.comb(steps, steps // 2) / 2**steps  # P(S_L = 0) for even L
    p_hat = random_walk["at_origin"] / walks
    walk = {
        "walks": walks,
        "steps": steps,
        "mean_square_displacement": _compare(random_walk["sum_sq"] / walks, steps),
        # E|S_L| = L * C(L, L/2) / 2^L for even L
        "mean_abs_displacement": _compare(random_walk["sum_abs"] / walks, steps * p_origin),
        "p_end_at_origin": _compare(p_hat, p_origin, math.sqrt(p_origin * (1 - p_origin) / walks)),
    }
    return {
        "pi": _compare(pi_estimate["estimate"], math.pi, pi_estimate["std_error"]),
        "e": _compare(e_estimate["estimate"], math.e, e_estimate["std_error"]),
        "random_walk": walk,
        "samples": pi_estimate["samples"],
    }
