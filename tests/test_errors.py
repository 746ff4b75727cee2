"""The error hierarchy: every error the runner reports carries its documented exit code."""

from __future__ import annotations

import signal

import pytest

from runner import errors
from runner.errors import Interrupted, RunnerError, exit_code_for
from runner.exit_codes import ExitCode

pytestmark = pytest.mark.unit


def _subclasses(cls: type[RunnerError]) -> list[type[RunnerError]]:
    found = []
    for sub in cls.__subclasses__():
        found += [sub, *_subclasses(sub)]
    return found


def test_every_runner_error_carries_an_exit_code_that_is_not_a_bug() -> None:
    classes = _subclasses(RunnerError)
    assert len(classes) > 20
    for cls in classes:
        if cls not in (Interrupted, errors.FleetFailed):  # theirs is per run, tested below
            assert cls.exit_code != ExitCode.INTERNAL, cls.__name__
    failed = errors.FleetFailed("2 targets failed", code=ExitCode.MIGRATION_FAILED)
    assert exit_code_for(failed) == ExitCode.MIGRATION_FAILED


def test_signals_and_bugs() -> None:
    assert exit_code_for(Interrupted(signal.SIGINT)) == ExitCode.INTERRUPTED
    assert exit_code_for(Interrupted(signal.SIGTERM)) == ExitCode.TERMINATED
    assert exit_code_for(Interrupted(signal.SIGHUP)) == ExitCode.TERMINATED
    assert exit_code_for(ValueError("a bug")) == ExitCode.INTERNAL
    assert exit_code_for(errors.PermissionDenied("x")) == ExitCode.AUTH_FAILED
    assert exit_code_for(errors.UnstableSession("x")) == ExitCode.CONFIG
