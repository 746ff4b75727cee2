"""How `status` shows the migrations: one row per version, as a table for people."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from runner.planner import APPLIED, AppliedMigration, MigrationFile, parse_files


def status_table(rows: Sequence[dict[str, Any]]) -> str:
    width = max([len("VERSION"), *(len(str(row["version"])) for row in rows)])
    lines = [f"{'VERSION':>{width}}  {'STATE':<8}  {'NAME':<32}  {'APPLIED AT':<25}  CHECKSUM"]
    for row in rows:
        checksum = str(row["checksum"] or row["recorded_checksum"] or "")[:12]
        lines.append(
            f"{row['version']:>{width}}  {row['state']:<8}  {row['name']:<32}  "
            f"{row['applied_at'] or '':<25}  {checksum}"
        )
    return "\n".join(lines) + "\n"


def status_rows(
    files: Sequence[MigrationFile], applied: Sequence[AppliedMigration]
) -> list[dict[str, Any]]:
    """One row per version: applied, pending, edited, missing (from disk), running or failed."""
    on_disk = {m.version: m for m in parse_files(files, strict=False)}
    in_db = {row.version: row for row in applied}
    rows = []
    for version in sorted(on_disk.keys() | in_db.keys()):
        migration, row = on_disk.get(version), in_db.get(version)
        if row is None:
            state = "pending"
        elif row.status != APPLIED:
            state = row.status
        elif migration is None:
            state = "missing"
        elif migration.up.checksum != row.checksum:
            state = "edited"
        else:
            state = "applied"
        rows.append(
            {
                "version": version,
                "name": migration.name if migration else row.name if row else "",
                "state": state,
                "file": migration.up.filename if migration else None,
                "checksum": migration.up.checksum if migration else None,
                "recorded_checksum": row.checksum if row else None,
                "applied_at": (
                    row.applied_at.isoformat(timespec="seconds") if row and row.applied_at else None
                ),
                "execution_ms": row.execution_ms if row else None,
                "applied_by": row.applied_by if row else None,
            }
        )
    return rows
