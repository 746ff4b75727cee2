"""The registry behind the fault table: how often each fault was injected, and survived."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import pytest


@dataclass
class Tally:
    runs: int = 0
    survived: int = 0


@dataclass
class FaultRegistry:
    rows: dict[str, Tally] = field(default_factory=dict)

    @contextmanager
    def trial(self, fault: str) -> Iterator[None]:
        """One injection of `fault`: it survived if the block ends without an exception."""
        tally = self.rows.setdefault(fault, Tally())
        tally.runs += 1
        yield
        tally.survived += 1

    def markdown(self) -> str:
        lines = ["| fault | runs | survived |", "|---|---:|---:|"]
        lines += [f"| {name} | {t.runs} | {t.survived} |" for name, t in self.rows.items()]
        total_runs = sum(t.runs for t in self.rows.values())
        total_survived = sum(t.survived for t in self.rows.values())
        lines.append(f"| **total** | {total_runs} | {total_survived} |")
        return "\n".join(lines) + "\n"


REGISTRY_KEY = pytest.StashKey[FaultRegistry]()


def record_marked_trial(item: pytest.Item) -> Iterator[None]:
    """For a test marked `@pytest.mark.fault("name")`: one trial of that fault, survived when
    the test passed (a hook wrapper around the test's call)."""
    marker = item.get_closest_marker("fault")
    if marker is None:
        yield
        return
    tally = item.config.stash[REGISTRY_KEY].rows.setdefault(str(marker.args[0]), Tally())
    tally.runs += 1
    outcome = yield
    if getattr(outcome, "excinfo", None) is None:
        tally.survived += 1
