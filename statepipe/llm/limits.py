"""Per-model limits shared by every step of a process: calls in flight, requests and tokens per
minute. A batch pool divides each limit among its processes (STATEPIPE_POOL_SIZE), so the pool as
a whole stays within what the provider allows."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from statepipe.llm.models import ModelConfig


class _Bucket:
    """A token bucket refilled continuously to `per_minute`; `take` blocks until it can."""

    def __init__(self, per_minute: float) -> None:
        self.rate = per_minute / 60.0
        self.capacity = max(1.0, per_minute)
        self.level = self.capacity
        self.stamp = time.monotonic()
        self.lock = threading.Lock()

    def take(self, amount: float) -> float:
        """Wait until `amount` is available; returns the seconds waited."""
        amount = min(amount, self.capacity)
        waited = 0.0
        while True:
            with self.lock:
                now = time.monotonic()
                self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
                self.stamp = now
                if self.level >= amount:
                    self.level -= amount
                    return waited
                pause = (amount - self.level) / self.rate
            time.sleep(pause)
            waited += pause


class _ModelLimits:
    def __init__(self, cfg: ModelConfig, share: int) -> None:
        self.cfg = cfg
        self.slots = threading.BoundedSemaphore(max(1, cfg.max_concurrency // share))
        self.requests = _Bucket(cfg.rpm / share) if cfg.rpm else None
        self.tokens = _Bucket(cfg.tpm / share) if cfg.tpm else None


_LIMITS: dict[str, _ModelLimits] = {}
_LOCK = threading.Lock()


def _share() -> int:
    try:
        return max(1, int(os.environ.get("STATEPIPE_POOL_SIZE", "1")))
    except ValueError:
        return 1


def _limits(cfg: ModelConfig) -> _ModelLimits:
    with _LOCK:
        current = _LIMITS.get(cfg.name)
        if current is None or current.cfg != cfg:  # configure() after a first call takes effect
            _LIMITS[cfg.name] = _ModelLimits(cfg, _share())
        return _LIMITS[cfg.name]


@contextmanager
def admitted(cfg: ModelConfig, estimated_tokens: int, on_wait: Callable[[str], None] | None = None) -> Iterator[float]:
    """Hold one of the model's call slots for the duration of a call; yields the seconds spent
    waiting for a slot and for the rate limits (`on_wait` hears about a wait as it starts)."""
    lim = _limits(cfg)
    began = time.monotonic()
    if not lim.slots.acquire(blocking=False):
        if on_wait is not None:
            on_wait(f"waiting for one of {cfg.name}'s {cfg.max_concurrency} call slots")
        lim.slots.acquire()
    try:
        waited = time.monotonic() - began
        waited += lim.requests.take(1) if lim.requests else 0.0
        if lim.tokens:
            waited += lim.tokens.take(estimated_tokens)
        yield waited
    finally:
        lim.slots.release()
