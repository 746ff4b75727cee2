"""Retry policies: bounded, jittered exponential backoff, built by one factory.

Every policy takes `sleep=` so that tests check the delays without sleeping, and counts the
deadline against both the wall clock and the time it has asked to sleep.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import tenacity
from tenacity.retry import RetryBaseT

RetryCallback = Callable[[tenacity.RetryCallState], None]


class _Deadline(tenacity.stop.stop_base):
    """Stop when the next sleep would end past the deadline."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def __call__(self, retry_state: tenacity.RetryCallState) -> bool:
        elapsed = max(retry_state.seconds_since_start or 0.0, retry_state.idle_for)
        return elapsed + (retry_state.upcoming_sleep or 0.0) > self.seconds


def backoff(
    *,
    deadline: float,
    retry: RetryBaseT,
    sleep: Callable[[float], Any] = time.sleep,
    initial: float = 0.1,
    maximum: float = 5.0,
    before_sleep: RetryCallback | None = None,
) -> tenacity.Retrying:
    """Exponential backoff from `initial` doubling to `maximum`, full jitter, until `deadline`
    seconds have passed; exceptions that `retry` rejects are raised at once."""
    return tenacity.Retrying(
        retry=retry,
        wait=tenacity.wait_random_exponential(multiplier=initial, max=maximum),
        stop=_Deadline(deadline),
        sleep=sleep,
        before_sleep=before_sleep,
    )


def remaining(retry_state: tenacity.RetryCallState, deadline: float) -> float:
    """Seconds left before `deadline`, never negative."""
    elapsed = max(retry_state.seconds_since_start or 0.0, retry_state.idle_for)
    return max(deadline - elapsed, 0.0)
