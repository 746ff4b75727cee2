"""The benchmark of `python entrypoint.py up` against its floor: run `python bench/bench.py`
(see bench/README.md). A package so that its modules import one another as `bench.*`."""
