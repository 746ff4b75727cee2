"""The planner, with plain lists and no database."""

from __future__ import annotations

import hashlib

import pytest

from runner.errors import (
    BadMigrationName,
    ChecksumMismatch,
    DownWithoutUp,
    DuplicateVersion,
    HalfApplied,
    MissingMigration,
    OutOfOrder,
)
from runner.planner import AppliedMigration, MigrationFile, find_problems, plan

pytestmark = pytest.mark.unit


def file(filename: str, content: str = "") -> MigrationFile:
    body = (content or filename).encode()
    return MigrationFile(filename, hashlib.sha256(body).hexdigest(), body)


def row(migration: MigrationFile, version: int, status: str = "applied") -> AppliedMigration:
    return AppliedMigration(version=version, name="x", checksum=migration.checksum, status=status)


def test_pending_are_unapplied_up_files_in_version_order() -> None:
    one, two, ten = file("000001_a.up.sql"), file("000002_b.up.sql"), file("000010_c.up.sql")
    result = plan([ten, file("000002_b.down.sql"), one, two], [row(one, 1)])
    assert [m.version for m in result.pending] == [2, 10]
    assert result.migrations[1].down is not None
    assert result.highest_applied == 1


def test_versions_sort_numerically_not_as_text() -> None:
    result = plan([file("10_ten.up.sql"), file("9_nine.up.sql")], [])
    assert [m.version for m in result.pending] == [9, 10]


def test_nothing_pending_when_everything_is_applied() -> None:
    one = file("1_a.up.sql")
    assert plan([one], [row(one, 1)]).pending == ()


@pytest.mark.parametrize(
    "filename",
    ["1_a.sql", "a_1.up.sql", "1-a.up.sql", "_a.up.sql", "1_.up.sql", "1_a.UP.sql", "1_a b.up.sql"],
)
def test_a_sql_file_with_a_bad_name_is_refused(filename: str) -> None:
    with pytest.raises(BadMigrationName, match=filename.replace(".", r"\.")):
        plan([file(filename)], [])


def test_two_files_with_one_version_are_refused() -> None:
    with pytest.raises(DuplicateVersion, match="same version 1"):
        plan([file("1_a.up.sql"), file("001_b.up.sql")], [])


def test_a_down_file_without_its_up_file_is_refused() -> None:
    with pytest.raises(DownWithoutUp, match=r"2_b\.down\.sql"):
        plan([file("1_a.up.sql"), file("2_b.down.sql")], [])


def test_an_edited_applied_file_is_refused() -> None:
    applied = file("1_a.up.sql", "CREATE TABLE a ();")
    edited = file("1_a.up.sql", "CREATE TABLE a (id int);")
    with pytest.raises(ChecksumMismatch, match=r"1_a\.up\.sql was edited") as caught:
        plan([edited], [row(applied, 1)])
    assert caught.value.version == 1


def test_an_applied_version_missing_on_disk_is_refused() -> None:
    one = file("1_a.up.sql")
    with pytest.raises(MissingMigration, match="database is newer"):
        plan([one], [row(one, 1), AppliedMigration(2, "gone", "abc")])


def test_a_pending_version_below_the_highest_applied_is_refused_unless_allowed() -> None:
    one, two, three = file("1_a.up.sql"), file("2_b.up.sql"), file("3_c.up.sql")
    with pytest.raises(OutOfOrder, match=r"2_b\.up\.sql"):
        plan([one, two, three], [row(one, 1), row(three, 3)])
    allowed = plan([one, two, three], [row(one, 1), row(three, 3)], allow_out_of_order=True)
    assert [m.version for m in allowed.pending] == [2]


@pytest.mark.parametrize("status", ["running", "failed"])
def test_a_half_applied_migration_needs_a_person(status: str) -> None:
    one = file("1_a.up.sql")
    with pytest.raises(HalfApplied, match=f"recorded as {status}"):
        plan([one], [row(one, 1, status)])


def test_every_problem_is_found_in_a_stable_order() -> None:
    one, two = file("1_a.up.sql"), file("2_b.up.sql")
    problems = find_problems(
        [file("bad.sql"), file("1_a.up.sql", "edited"), file("3_c.down.sql")],
        [row(one, 1), row(two, 2)],
    )
    assert [type(p) for p in problems] == [
        BadMigrationName,
        DownWithoutUp,
        ChecksumMismatch,
        MissingMigration,
    ]
