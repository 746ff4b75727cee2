"""The fault suite (`pytest -m faults`): faults injected while a run is in progress."""
