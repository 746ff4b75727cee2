"""The fault suite's clusters and databases. Its registry of faults survived, and the table
printed at the end, live in tests/conftest.py: other suites record trials too."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.faults.harness import Database, fresh_database, started_cluster
from tests.pgcluster import TempCluster


@pytest.fixture(scope="module")
def cluster() -> Iterator[TempCluster]:
    """A throwaway cluster for one module's faults: a restart or a crash stays in it."""
    with started_cluster() as cluster:
        yield cluster


@pytest.fixture
def db(cluster: TempCluster) -> Iterator[Database]:
    with fresh_database(cluster) as database:
        yield database
