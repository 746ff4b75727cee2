#!/usr/bin/env python3
"""`entrypoint.py` with one synchronous commit per migration, for the many-sync workload:
`python bench/sync_commit_runner.py up` with the runner's usual environment.

The runner sets `synchronous_commit TO off` on its connection (and again in the session reset
before each migration), and makes the run durable with one synchronous commit at its end. Here
every module-level constant of the runner that turns synchronous commit off -- such as
`runner.sql.SET_ASYNCHRONOUS_COMMIT`, or wherever the runner keeps it now -- is replaced by
`SET synchronous_commit = on` before `runner.cli.main()` runs, so that each migration's commit
waits for the WAL flush (and for a synchronous standby). Exit 2 when there is none to replace.
The runner is imported from $BENCH_RUNNER_ROOT (the directory of the benchmark's
--entrypoint), else from this checkout.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import re
import sys
from pathlib import Path

ROOT = os.environ.get("BENCH_RUNNER_ROOT") or str(Path(__file__).resolve().parent.parent)
sys.path[0] = ROOT  # the runner's checkout in place of bench/, like entrypoint.py's own dir

import psycopg.sql  # noqa: E402

import runner  # noqa: E402
import runner.cli  # noqa: E402

_OFF = re.compile(r"\bsynchronous_commit(\s*(?:TO|=)\s*)'?(?:off|local)'?", re.IGNORECASE)
_ON = r"synchronous_commit = on"


def force_synchronous_commit() -> list[str]:
    """Replace every str or psycopg.sql.SQL constant of the runner's modules that sets
    synchronous_commit off; the names replaced."""
    for found in pkgutil.iter_modules(runner.__path__, "runner."):
        if not found.name.endswith(".__main__"):
            importlib.import_module(found.name)
    replaced = []
    for name, module in sorted(sys.modules.items()):
        if name != "runner" and not name.startswith("runner."):
            continue
        for attribute, value in list(vars(module).items()):
            if attribute.startswith("__"):
                continue  # a docstring may mention it
            if isinstance(value, str) and _OFF.search(value):
                setattr(module, attribute, _OFF.sub(_ON, value))
            elif isinstance(value, psycopg.sql.SQL) and _OFF.search(value.as_string()):
                setattr(module, attribute, psycopg.sql.SQL(_OFF.sub(_ON, value.as_string())))
            else:
                continue
            replaced.append(f"{name}.{attribute}")
    return replaced


if __name__ == "__main__":
    if not force_synchronous_commit():
        print(
            "sync_commit_runner: no constant of the runner sets synchronous_commit off; "
            "nothing to make synchronous",
            file=sys.stderr,
        )
        sys.exit(2)
    sys.exit(runner.cli.main())
