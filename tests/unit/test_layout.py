"""The house's walls: imports run one way, one room talks to the database, values stand alone.

Read from the source with ``ast``: every import counts, also those inside
functions and under ``TYPE_CHECKING`` (a cycle in types is still a cycle a
reader must untangle).
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "eventbus"

# Lower ranks are further down; a module may import its own room and rooms of lower rank.
RANKS = {
    "eventbus._errors": -1,  # under everything: the errors import nothing of ours
    "eventbus._nursery": 0,
    "eventbus._channels": 0,
    "eventbus._values": 1,
    "eventbus._db": 1,
    "eventbus._store": 2,
    "eventbus._stream": 3,
    "eventbus._projections": 4,
    "eventbus._bus": 5,
    "eventbus.testing": 6,
    "eventbus.values": 6,
    "eventbus": 7,
    "eventbus._telemetry": 0,
    "eventbus._admin": 8,
    "eventbus.__main__": 9,
}
MAX_LINES = 500


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imports(name: str, path: Path) -> Iterator[str]:
    """Every module ``name`` imports (absolute names), wherever the import sits."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            yield target
            for alias in node.names:  # `from . import _json` imports a module
                yield f"{target}.{alias.name}"


def graph() -> dict[str, set[str]]:
    known = modules()
    # A module's own packages are imported before it anyway: `from . import x` is an edge to x only.
    return {
        name: {t for t in imports(name, path) if t in known and t != name and not name.startswith(t + ".")}
        for name, path in known.items()
    }


def room(name: str) -> str:
    parts = name.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 else name


def test_there_is_no_import_cycle_in_the_library() -> None:
    edges = graph()
    cycles: list[list[str]] = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                cycles.append([*stack[stack.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)
    assert cycles == []


def test_imports_run_downward_from_room_to_room() -> None:
    upward = []
    for name, targets in graph().items():
        for target in targets:
            here, there = room(name), room(target)
            if here == there or target == "eventbus":
                continue
            if RANKS[there] >= RANKS[here]:
                upward.append(f"{name} -> {target}")
    assert upward == []


def test_only_the_db_room_imports_asyncpg_and_trio_asyncio() -> None:
    offenders = [
        f"{name} imports {target}"
        for name, path in modules().items()
        for target in imports(name, path)
        if target.split(".")[0] in ("asyncpg", "trio_asyncio") and room(name) != "eventbus._db"
    ]
    assert offenders == []


def test_nothing_outside_the_library_and_its_tests_imports_a_private_module() -> None:
    offenders = []
    for folder in ("apps", "tui", "bench", "chaos"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                names = (
                    [a.name for a in node.names]
                    if isinstance(node, ast.Import)
                    else [node.module or ""] + [f"{node.module}.{a.name}" for a in node.names]
                    if isinstance(node, ast.ImportFrom) and node.level == 0
                    else []
                )
                offenders += [f"{path.relative_to(ROOT)}: {n}" for n in names if n.startswith("eventbus._")]
    assert offenders == []


@pytest.mark.parametrize("name", sorted(modules()))
def test_a_module_stays_small(name: str) -> None:
    lines = len(modules()[name].read_text().splitlines())
    assert lines <= MAX_LINES, f"{name} has {lines} lines: two concepts?"


BLOCK_DATABASE_STACK = textwrap.dedent(
    """
    import sys
    class Refuse:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("asyncpg", "trio_asyncio"):
                raise ImportError(f"{name} is not installed")
    sys.meta_path.insert(0, Refuse())
    """
)


def test_the_values_import_and_work_without_the_database_stack() -> None:
    code = BLOCK_DATABASE_STACK + textwrap.dedent(
        """
        from eventbus.values import Event, EventFilter, create_filter, InvalidEvent
        import eventbus
        f = create_filter(["Opened"], [{"id": "a"}])
        assert f.matches(eventbus.EventRecord(1, Event("Opened", {"id": "a", "n": 1}).event_id, "Opened",
                                              {"id": "a", "n": 1}, {}, __import__("datetime").datetime.now()))
        assert "asyncpg" not in sys.modules and "trio_asyncio" not in sys.modules
        try:
            eventbus.open_bus
        except ImportError as exc:
            print("refused:", exc)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("refused: asyncpg is not installed") or "trio_asyncio" in out.stdout


TEST_FOLDERS = {"values", "db", "store", "stream", "projections", "bus", "telemetry", "admin", "banking"}
"""Where the library's tests live, under tests/unit and tests/integration: one
folder per room (``banking`` for the example)."""


def test_the_tests_mirror_the_rooms() -> None:
    misplaced = []
    for kind in ("unit", "integration"):
        for path in sorted((ROOT / "tests" / kind).rglob("test_*.py")):
            where = path.relative_to(ROOT / "tests" / kind).parts
            if path.name == "test_layout.py" and len(where) == 1:
                continue  # the walls of the whole house
            if len(where) < 2 or where[0] not in TEST_FOLDERS:
                misplaced.append(str(path.relative_to(ROOT)))
    assert misplaced == []
    rooms = {p.name[1:] for p in PACKAGE.iterdir() if p.is_dir() and p.name[:1] == "_" and p.name[:2] != "__"}
    assert rooms and rooms <= TEST_FOLDERS, rooms  # every room has its folder
