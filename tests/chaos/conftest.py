"""The chaos suite's marker: ``pytest -m "not chaos"`` leaves out the minute-long run."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "chaos: runs the chaos harness (processes, faults, a server of its own)")
