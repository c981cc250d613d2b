"""A copy of the checkout as a fresh clone has it: no environment, no build leftovers."""

from __future__ import annotations

import shutil
from pathlib import Path

from ..helpers import ROOT

LEFTOVERS = {
    ".git",
    ".venv",
    "build",
    "dist",
    "__pycache__",
    ".mypy_cache",
    ".ruff_cache",
    ".pytest_cache",
    ".hypothesis",
}


def copy_checkout(dest: Path) -> Path:
    """Copy the checkout to ``dest`` (which must not exist) and return ``dest``."""

    def ignore(folder: str, names: list[str]) -> set[str]:
        leftovers = {name for name in names if name in LEFTOVERS or name.endswith(".egg-info")}
        return leftovers | ({"results"} if Path(folder) == ROOT / "bench" else set())

    return Path(shutil.copytree(ROOT, dest, ignore=ignore, symlinks=True))
