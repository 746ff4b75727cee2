"""Retry policies: bounded, jittered exponential backoff, built by one factory.

Every policy takes `sleep=` so that tests check the delays without sleeping, and counts the
deadline against both the wall clock and the time it has asked to sleep.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

import tenacity
from tenacity.retry import RetryBaseT

from runner import stopping

RetryCallback = Callable[[tenacity.RetryCallState], None]
P = ParamSpec("P")
T = TypeVar("T")


def _elapsed(retry_state: tenacity.RetryCallState) -> float:
    return max(retry_state.seconds_since_start or 0.0, retry_state.idle_for)


class _Deadline(tenacity.stop.stop_base):
    """Stop once the deadline has passed."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def __call__(self, retry_state: tenacity.RetryCallState) -> bool:
        return _elapsed(retry_state) >= self.seconds


class _UntilDeadline(tenacity.wait.wait_base):
    """The inner wait, cut short so that the last attempt happens at the deadline."""

    def __init__(self, inner: tenacity.wait.wait_base, seconds: float) -> None:
        self.inner = inner
        self.seconds = seconds

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        return max(min(self.inner(retry_state), self.seconds - _elapsed(retry_state)), 0.0)


def backoff(
    *,
    deadline: float = float("inf"),
    attempts: int | None = None,
    retry: RetryBaseT,
    sleep: Callable[[float], Any] = time.sleep,
    initial: float = 0.1,
    maximum: float = 5.0,
    before_sleep: RetryCallback | None = None,
) -> tenacity.Retrying:
    """Exponential backoff from `initial` doubling to `maximum`, full jitter, until `deadline`
    seconds have passed (the last try at the deadline) or after `attempts` tries; exceptions
    that `retry` rejects are raised at once."""
    stop: tenacity.stop.stop_base = _Deadline(deadline)
    if attempts is not None:
        stop = stop | tenacity.stop_after_attempt(attempts)
    return tenacity.Retrying(
        retry=retry,
        wait=_UntilDeadline(
            tenacity.wait_random_exponential(multiplier=initial, max=maximum), deadline
        ),
        stop=stop,
        sleep=stopping.stoppable(sleep),
        before_sleep=before_sleep,
    )


def remaining(retry_state: tenacity.RetryCallState, deadline: float) -> float:
    """Seconds left before `deadline`, never negative."""
    return max(deadline - _elapsed(retry_state), 0.0)


def failed_first(failure: BaseException, attempt: Callable[P, T]) -> Callable[P, T]:
    """`attempt`, for a policy built only after a first try, made without one, failed with
    `failure` (most runs never need the policy): the policy's first call raises that failure,
    so that it counts as the first attempt, and later calls try again."""
    pending = [failure]

    def again(*args: P.args, **kwargs: P.kwargs) -> T:
        if pending:
            raise pending.pop()
        return attempt(*args, **kwargs)

    return again
