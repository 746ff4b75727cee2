"""The fault suite's marker, its registry of faults survived, and the table printed at the end.

Each fault test wraps every injection in `fault_registry.trial(name)`: a run counts, and it
survived when every invariant held. The table goes to the terminal, and to the file named by
FAULT_TABLE_FILE when that is set (a fixed path would be shared by two runs on one machine).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults.harness import (
    REGISTRY_KEY,
    Database,
    FaultRegistry,
    fresh_database,
    started_cluster,
)
from tests.pgcluster import TempCluster


def pytest_configure(config: pytest.Config) -> None:
    config.stash[REGISTRY_KEY] = FaultRegistry()


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, config: pytest.Config
) -> None:
    registry = config.stash.get(REGISTRY_KEY, None)
    if registry is None or not registry.rows:
        return
    table = registry.markdown()
    terminalreporter.section("fault table")
    terminalreporter.write(table)
    target = os.environ.get("FAULT_TABLE_FILE")
    if target:
        Path(target).write_text(table, encoding="utf-8")
        terminalreporter.write_line(f"(written to {target})")


@pytest.fixture(scope="session")
def fault_registry(pytestconfig: pytest.Config) -> FaultRegistry:
    return pytestconfig.stash[REGISTRY_KEY]


@pytest.fixture(scope="module")
def cluster() -> Iterator[TempCluster]:
    """A throwaway cluster for one module's faults: a restart or a crash stays in it."""
    with started_cluster() as cluster:
        yield cluster


@pytest.fixture
def db(cluster: TempCluster) -> Iterator[Database]:
    with fresh_database(cluster) as database:
        yield database
