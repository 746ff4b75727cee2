"""Where dbmate comes from: --dbmate, else PATH, else the npm package in the cache dir."""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import subprocess
from pathlib import Path

from bench.procs import progress


def find_dbmate(args: argparse.Namespace) -> str | None:
    """--dbmate, else `dbmate` on PATH, else the binary of the npm package in the cache dir,
    installed there with `npm install --prefix` when npm is available."""
    if args.no_dbmate:
        args.dbmate_note = "--no-dbmate"
        return None
    if args.dbmate:
        return str(args.dbmate)
    on_path = shutil.which("dbmate")
    if on_path:
        return on_path
    cache: Path = args.cache_dir

    def cached() -> str | None:
        # The platform package's binary itself, not the node wrapper in node_modules/.bin.
        for candidate in sorted(glob.glob(str(cache / "node_modules/@dbmate/*/bin/dbmate"))):
            if os.access(candidate, os.X_OK):
                return candidate
        return None

    found = cached()
    if found:
        return found
    npm = shutil.which("npm")
    if npm is None:
        args.dbmate_note = "npm not found; pass --dbmate PATH"
        return None
    progress(f"installing dbmate with npm into {cache} ...")
    cache.mkdir(parents=True, exist_ok=True)
    try:
        done = subprocess.run(
            [npm, "install", "--prefix", str(cache), "--no-audit", "--no-fund", "dbmate"],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        args.dbmate_note = f"npm install dbmate failed: {error}"
        return None
    found = cached()
    if found is None:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        args.dbmate_note = f"npm install dbmate gave no binary: {tail[0]}"
    return found
