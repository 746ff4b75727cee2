#!/usr/bin/env python3
"""Container entrypoint: `python entrypoint.py [COMMAND] [flags]`; see `--help`."""

import os
import sys

# Runnable from a checkout or the image without installing the package.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from runner.cli import exit_now, main

if __name__ == "__main__":
    exit_now(main())
