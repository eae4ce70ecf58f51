"""Retry policy. Delays come from tenacity's wait strategies so backoff behaves as users of
tenacity expect; the engine persists each wait so a crash mid-wait resumes the same wait."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import tenacity

from statepipe.errors import NonRetryable, StepProcessDied, StepTimeout

Backoff = Literal["exponential", "linear", "fixed"]


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 1
    initial_interval: float = 1.0
    backoff: Backoff = "exponential"
    max_interval: float = 60.0
    jitter: float = 0.0
    retry_on: tuple[type[BaseException], ...] = (Exception,)
    never_retry: tuple[type[BaseException], ...] = ()

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.backoff not in ("exponential", "linear", "fixed"):
            raise ValueError(f"backoff must be exponential, linear or fixed, not {self.backoff!r}")

    def with_attempts(self, n: int) -> RetryPolicy:
        return replace(self, max_attempts=n)

    def _wait(self) -> tenacity.wait.wait_base:
        if self.backoff == "exponential":
            base: tenacity.wait.wait_base = tenacity.wait_exponential(
                multiplier=self.initial_interval, exp_base=2, max=self.max_interval
            )
        elif self.backoff == "linear":
            base = tenacity.wait_incrementing(
                start=self.initial_interval, increment=self.initial_interval, max=self.max_interval
            )
        else:
            base = tenacity.wait_fixed(self.initial_interval)
        if self.jitter:
            base = base + tenacity.wait_random(0, self.jitter)
        return base

    def should_retry(self, attempt: int, error: BaseException) -> bool:
        if attempt >= self.max_attempts:
            return False
        if isinstance(error, NonRetryable) or isinstance(error, self.never_retry):
            return False
        return isinstance(error, (self.retry_on, StepTimeout, StepProcessDied))

    def delay(self, attempt: int, error: BaseException | None = None) -> float:
        """Seconds to wait after failed attempt number `attempt` (1-based). An exception carrying
        `retry_after` (seconds, e.g. from an HTTP 429) is honoured when it asks for longer."""
        state = tenacity.RetryCallState(retry_object=None, fn=None, args=(), kwargs={})  # type: ignore[arg-type]
        state.attempt_number = attempt
        seconds = float(self._wait()(state))
        hint = getattr(error, "retry_after", None)
        if isinstance(hint, (int, float)) and hint > seconds:
            seconds = float(hint)
        return seconds
