"""README.md documents every setting and every exit code the code knows."""

from __future__ import annotations

import re

from runner.config import VARIABLES
from runner.exit_codes import ExitCode
from tests.conftest import ROOT

README = (ROOT / "README.md").read_text()


def test_every_setting_is_in_the_configuration_table() -> None:
    for variable in VARIABLES:
        assert f"`{variable.name}`" in README, variable.name
        assert f"`{variable.flag}`" in README, variable.flag


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
