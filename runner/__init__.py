"""migration-runner: applies PostgreSQL schema migrations exactly once, safely, as a job."""

__version__ = "0.1.0"
