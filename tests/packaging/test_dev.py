"""./dev: one command sets up what a checkout is missing, then runs a task.

The README, CI and ./dev give one set-up. ./dev runs in a copy of the checkout
as a new shell would start it. A stand-in environment (a ``python`` and a
``just`` that write down how they were called) shows what it decides; a real
one, made with pip kept off every index, shows that it makes the environment
and stops when pip fails. CI's own run (``.ci/run``) sets up a fresh clone
with the index, the whole way.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from importlib.machinery import SourceFileLoader
from pathlib import Path
from types import ModuleType

import pytest
import trio

from ..helpers import ROOT
from .checkout import copy_checkout


def load_dev() -> ModuleType:
    loader = SourceFileLoader("dev", str(ROOT / "dev"))
    spec = importlib.util.spec_from_loader("dev", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


INSTALL = ["-m", "pip", "install", "-e", ".[embedded,dev]", "-e", "./examples"]


def test_the_readme_ci_and_dev_give_one_set_up() -> None:
    assert list(load_dev().INSTALL) == INSTALL
    readme = (ROOT / "README.md").read_text()
    assert "pip install -e '.[embedded,dev]' -e ./examples\n" in readme
    set_up = readme[readme.index("## Set up, test, run") :]
    assert set_up.index("./dev banking ") < set_up.index("./dev test ") < set_up.index("pip install")
    ci = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line and not line.startswith("#")]
    assert ci[-4:] == ["rm -rf .venv", "./dev lint", ". .venv/bin/activate", "just test"]
    assert "`just test`" in set_up[: set_up.index("pip install")]  # the README's test command, by name
    assert os.access(ROOT / "dev", os.X_OK)


# ------------------------------------------------------------------ running it

STAND_IN = """#!{python}
# A stand-in for {name}: writes down how it was called; pip answers with the status in
# pip-status, after the seconds in pip-slow.
import json, os, sys, time
from pathlib import Path

venv = Path(__file__).resolve().parent.parent
with open(venv / "calls", "a") as calls:
    calls.write(json.dumps({{"program": "{name}", "argv": sys.argv[1:], "cwd": os.getcwd()}}) + "\\n")
if "{name}" == "just":
    print("just, standing in")
elif sys.argv[1:3] == ["-m", "pip"]:
    if (venv / "pip-slow").exists():
        time.sleep(float((venv / "pip-slow").read_text()))
    status = venv / "pip-status"
    sys.exit(int(status.read_text()) if status.exists() else 0)
"""


def stand_in_venv(venv: Path) -> Path:
    """A folder that passes for a virtual environment: bin/python and bin/just write down their calls."""
    (venv / "bin").mkdir(parents=True)
    for name in ("python", "just"):
        program = venv / "bin" / name
        program.write_text(STAND_IN.format(python=sys.executable, name=name))
        program.chmod(0o755)
    return venv


def calls(venv: Path) -> list[tuple[str, list[str], str]]:
    """The stand-ins' calls since the last look, interpreter checks left out: (program, argv, cwd)."""
    log = venv / "calls"
    if not log.exists():
        return []
    found = [json.loads(line) for line in log.read_text().splitlines()]
    log.unlink()
    return [(call["program"], call["argv"], call["cwd"]) for call in found if call["argv"][:1] != ["-c"]]


def clean_environment(**values: str) -> dict[str, str]:
    """This process's environment as a new shell has it (no virtual environment active), plus ``values``."""
    env = {name: value for name, value in os.environ.items() if name not in ("VIRTUAL_ENV", "PYTHONPATH")}
    if "VIRTUAL_ENV" in os.environ:
        active = str(Path(os.environ["VIRTUAL_ENV"]) / "bin")
        env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if p != active)
    return {**env, **values}


async def dev(
    checkout: Path, *args: str, cwd: Path | None = None, env: dict[str, str] | None = None
) -> tuple[int, str, str]:
    """Run ``<checkout>/dev args``; its status, standard output and what it said it set up.

    The set-up is the first word of each of its ``dev:`` lines on stderr.
    """
    result = await trio.run_process(
        [str(checkout / "dev"), *args],
        cwd=cwd or checkout,
        env=env or clean_environment(),
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    err = result.stderr.decode()
    steps = [line.split()[1] for line in err.splitlines() if line.startswith("dev: ")]
    return result.returncode, result.stdout.decode(), " ".join(steps)


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    return copy_checkout(tmp_path / "clone")


async def test_dev_installs_once_and_again_only_when_a_pyproject_changes(checkout: Path) -> None:
    venv = stand_in_venv(checkout / ".venv")

    assert await dev(checkout, "test", "-k", "two words") == (0, "just, standing in\n", "installing")
    root = str(checkout)
    assert calls(venv) == [("python", INSTALL, root), ("just", ["test", "-k", "two words"], root)]

    assert await dev(checkout, "--version") == (0, "just, standing in\n", "")
    assert calls(venv) == [("just", ["--version"], root)]

    for changed in ("examples/pyproject.toml", "pyproject.toml"):
        with (checkout / changed).open("a") as pyproject:
            pyproject.write("# changed\n")
        assert await dev(checkout, "--version") == (0, "just, standing in\n", "installing")
        assert calls(venv) == [("python", INSTALL, root), ("just", ["--version"], root)]
        assert await dev(checkout, "--version") == (0, "just, standing in\n", "")
        assert calls(venv) == [("just", ["--version"], root)]


async def test_dev_runs_a_task_from_the_checkouts_root_and_lists_them_without_one(checkout: Path) -> None:
    venv = stand_in_venv(checkout / ".venv")
    assert await dev(checkout, cwd=checkout / "tests") == (0, "just, standing in\n", "installing")
    assert calls(venv) == [("python", INSTALL, str(checkout)), ("just", ["--list"], str(checkout))]


async def test_when_pip_fails_dev_stops_with_its_status_and_tries_again_next_time(checkout: Path) -> None:
    venv = stand_in_venv(checkout / ".venv")
    (venv / "pip-status").write_text("3")
    assert await dev(checkout, "test") == (3, "", "installing")
    assert calls(venv) == [("python", INSTALL, str(checkout))]
    (venv / "pip-status").write_text("0")
    assert await dev(checkout, "test") == (0, "just, standing in\n", "installing")


async def test_two_runs_at_once_install_once(checkout: Path) -> None:
    venv = stand_in_venv(checkout / ".venv")
    (venv / "pip-slow").write_text("1")
    results = []

    async def run_dev() -> None:
        results.append(await dev(checkout, "--version"))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_dev)
        nursery.start_soon(run_dev)
    assert sorted(results) == [(0, "just, standing in\n", ""), (0, "just, standing in\n", "installing")]
    assert [program for program, _, _ in calls(venv)].count("python") == 1


async def test_a_linked_environment_is_used_as_it_is_and_never_changed(checkout: Path, tmp_path: Path) -> None:
    elsewhere = stand_in_venv(tmp_path / "shared")
    (checkout / ".venv").symlink_to(elsewhere)
    assert await dev(checkout, "test") == (0, "just, standing in\n", "using")
    assert calls(elsewhere) == [("just", ["test"], str(checkout))]

    (checkout / ".venv").unlink()
    (checkout / ".venv").symlink_to(tmp_path / "gone")
    status, out, _ = await dev(checkout, "test")
    assert (status, out) == (1, "")
    assert (checkout / ".venv").readlink() == tmp_path / "gone"


@pytest.mark.slow
async def test_dev_makes_the_environment_again_when_it_has_no_pip_and_keeps_it_when_pip_cannot_reach_an_index(
    checkout: Path, tmp_path: Path
) -> None:
    # As a run killed while it made the environment leaves it: an interpreter, no pip.
    await trio.run_process([sys.executable, "-m", "venv", "--without-pip", str(checkout / ".venv")])
    (tmp_path / "no-wheels").mkdir()
    offline = clean_environment(PIP_NO_INDEX="1", PIP_FIND_LINKS=str(tmp_path / "no-wheels"))
    status, out, steps = await dev(checkout, "test", env=offline)
    assert (status != 0, out, steps) == (True, "", "making installing")
    python = checkout / ".venv" / "bin" / "python"
    made = await trio.run_process([str(python), "-m", "pip", "--version"], capture_stdout=True)
    assert made.stdout.startswith(b"pip ")
    assert not (checkout / ".venv" / "eventbus-dev.stamp").exists()

    # The environment stays; the installation is tried again.
    status, out, steps = await dev(checkout, "test", env=offline)
    assert (status != 0, out, steps) == (True, "", "installing")
