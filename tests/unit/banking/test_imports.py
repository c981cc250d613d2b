"""What the bank imports: its functional core needs no database stack, and
nothing of it needs the dashboard.

Each core module is imported in a fresh interpreter in which asyncpg, trio-asyncio
and trio cannot be imported: a core that reached for ``eventbus`` (whose actors
need them) rather than ``eventbus.values`` would fail here.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys

import pytest

from ...helpers import ROOT

ABSENT = ("asyncpg", "trio_asyncio", "trio")
"""The packages the interpreter of these tests cannot import."""

FEATURES = ROOT / "apps" / "banking" / "features"

PURE_MODULES = [
    "apps.banking.domain",
    *sorted(
        f"apps.banking.features.{path.parent.name}.{path.stem}"
        for path in FEATURES.glob("*/*.py")
        if path.stem in ("core", "types")
    ),
]

IMPORT_WITHOUT_THE_STACK = """
import importlib
import importlib.abc
import sys

module, absent = sys.argv[1], frozenset(sys.argv[2].split(","))


class Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in absent:
            raise ModuleNotFoundError(f"No module named {name!r} (absent in this test)", name=name)
        return None


assert absent.isdisjoint(sys.modules), sorted(absent & set(sys.modules))
sys.meta_path.insert(0, Absent())
importlib.import_module(module)
loaded = absent & {name.partition(".")[0] for name in sys.modules}
assert not loaded, f"{module} loaded {sorted(loaded)}"
"""


def import_without_the_stack(module: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", IMPORT_WITHOUT_THE_STACK, module, ",".join(ABSENT)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def imported_modules(tree: ast.AST) -> set[str]:
    """The absolute imports of a module's source."""
    names = {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.level == 0}
    return names | {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}


def test_every_feature_has_its_core_and_types_checked() -> None:
    features = sorted(path.parent.name for path in FEATURES.glob("*/shell.py"))
    assert len(features) == 8
    for feature in features:
        assert f"apps.banking.features.{feature}.core" in PURE_MODULES
        assert f"apps.banking.features.{feature}.types" in PURE_MODULES


@pytest.mark.parametrize("module", ["eventbus.values", *PURE_MODULES])
def test_imports_without_asyncpg_trio_asyncio_or_trio(module: str) -> None:
    done = import_without_the_stack(module)
    assert (done.returncode, done.stderr) == (0, "")


@pytest.mark.parametrize("module", PURE_MODULES)
def test_takes_its_eventbus_names_from_eventbus_values_only(module: str) -> None:
    imported = imported_modules(ast.parse(ROOT.joinpath(*module.split(".")).with_suffix(".py").read_text()))
    assert {name for name in imported if name.partition(".")[0] == "eventbus"} <= {"eventbus.values"}


def test_the_database_stack_is_really_absent_in_that_interpreter() -> None:
    done = import_without_the_stack("eventbus.testing")
    assert done.returncode == 1
    assert "(absent in this test)" in done.stderr


def test_the_bank_never_imports_the_dashboard() -> None:
    """Not by an import statement, nor by a string naming it (a dynamic import)."""
    dashboard = re.compile(r"tui(\.\w+)*")
    found = {}
    for path in sorted((ROOT / "apps").rglob("*.py")):
        tree = ast.parse(path.read_text())
        strings = {
            node.value for node in ast.walk(tree) if isinstance(node, ast.Constant) and isinstance(node.value, str)
        }
        names = sorted(filter(dashboard.fullmatch, imported_modules(tree) | strings))
        if names:
            found[str(path.relative_to(ROOT))] = names
    assert found == {}
