"""README.md documents every setting and every exit code the code knows."""

from __future__ import annotations

import re

import pytest

from runner.config import VARIABLES
from runner.exit_codes import ExitCode
from tests.conftest import ROOT

pytestmark = pytest.mark.unit

README = (ROOT / "README.md").read_text()


def _configuration_rows() -> dict[str, tuple[str, str]]:
    """variable -> (flag cell, default cell) of README's configuration table, backticks
    dropped; a row of two variables (`X` / `X_FILE`) gives both."""
    section = README.split("\n## Configuration", 1)[1].split("\n## ", 1)[0]
    rows: dict[str, tuple[str, str]] = {}
    for line in section.splitlines():
        cells = [cell.strip().replace("`", "") for cell in line.strip("|").split("|")]
        if len(cells) != 4 or not line.startswith("| `"):
            continue
        for name in cells[0].split(" / "):
            rows[name] = (cells[1], cells[2])
    return rows


def test_the_configuration_table_is_the_settings_table() -> None:
    """Every setting, its flag and its default as from_env and --help know them; and no row
    for a setting the code does not have (DB_PASSWORD has no flag of its own)."""
    rows = _configuration_rows()
    for variable in VARIABLES:
        assert variable.name in rows, variable.name
        flags, default = rows[variable.name]
        assert variable.flag in flags.split(" / "), variable.name
        if variable.default:
            assert default == variable.default or default.startswith(f"{variable.default} "), (
                f"{variable.name}: README says {default!r}, the code {variable.default!r}"
            )
    assert set(rows) == {variable.name for variable in VARIABLES} | {"DB_PASSWORD"}


def test_the_exit_code_table_matches_the_enum() -> None:
    table = re.findall(r"^\| (\d+(?:, \d+)*) \| .* \| (go on|fail|retry) \|$", README, re.M)
    documented: dict[int, str] = {}
    for codes, action in table:
        for code in codes.split(", "):
            documented[int(code)] = action
    expected = {
        int(code): "go on" if code == ExitCode.OK else "retry" if code.retryable else "fail"
        for code in ExitCode
    }
    assert documented == expected


def _readme_events() -> set[str]:
    section = README.split("\n## Logs", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    return {name for row in rows for name in re.findall(r"`([a-z_]+\.[a-z_]+)`", row.split("|")[1])}


def _emitted_events(prefixes: set[str]) -> set[str]:
    """Every string literal in runner/ shaped like an event name of a known family."""
    source = "\n".join(path.read_text() for path in sorted((ROOT / "runner").glob("*.py")))
    names = set(re.findall(r"\"([a-z_]+\.[a-z_]+)\"", source))
    return {name for name in names if name.split(".")[0] in prefixes}


def test_the_event_table_lists_every_event_the_runner_emits() -> None:
    documented = _readme_events()
    families = {name.split(".")[0] for name in documented}
    assert {"run", "migration", "lock", "db"} <= families
    emitted = _emitted_events(families)
    assert emitted - documented == set(), "emitted but not in README's event table"
    assert documented - emitted == set(), "in README's event table but never emitted"
