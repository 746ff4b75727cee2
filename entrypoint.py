#!/usr/bin/env python3
"""Container entrypoint: `python entrypoint.py [up|status|plan|validate|wait] [flags]`."""

import sys
from pathlib import Path

# Runnable from a checkout or the image without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from runner.cli import main

if __name__ == "__main__":
    sys.exit(main())
