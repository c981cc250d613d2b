"""./dev: from a fresh clone, one command sets up what is missing and runs a task.

The README, CI and ./dev give one set-up; the bootstrap itself runs in a copy
of the checkout that has no environment yet, with pip and the configured index.
"""

from __future__ import annotations

import importlib.util
import os
import re
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


def test_the_readme_ci_and_dev_give_one_set_up() -> None:
    readme = (ROOT / "README.md").read_text()
    install = " ".join(load_dev().INSTALL[3:])
    assert install == "-e .[embedded,dev] -e ./examples"
    assert "pip install -e '.[embedded,dev]' -e ./examples\n" in readme
    set_up = readme[readme.index("## Set up, test, run") :]
    assert set_up.index("./dev banking ") < set_up.index("./dev test ") < set_up.index("pip install")
    ci = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line and not line.startswith("#")]
    assert ci[-3:] == ["rm -rf .venv", "./dev lint", "./dev test"]
    assert os.access(ROOT / "dev", os.X_OK)


def clean_environment() -> dict[str, str]:
    """This process's environment as a new shell has it: no virtual environment active."""
    env = {name: value for name, value in os.environ.items() if name not in ("VIRTUAL_ENV", "PYTHONPATH")}
    if "VIRTUAL_ENV" in os.environ:
        venv_bin = str(Path(os.environ["VIRTUAL_ENV"]) / "bin")
        env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if p != venv_bin)
    return env


async def dev(checkout: Path, *args: str) -> tuple[str, str]:
    """Run ``./dev args`` in ``checkout``; its standard output and error."""
    result = await trio.run_process(
        ["./dev", *args],
        cwd=checkout,
        env=clean_environment(),
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    out, err = result.stdout.decode(), result.stderr.decode()
    assert result.returncode == 0, out + err
    return out, err


def steps(err: str) -> list[str]:
    """What ./dev said it set up: the first word of each of its lines."""
    return [line.split()[1] for line in err.splitlines() if line.startswith("dev: ")]


@pytest.mark.slow
async def test_dev_sets_up_a_fresh_clone_once_and_again_only_when_a_pyproject_changes(tmp_path: Path) -> None:
    checkout = copy_checkout(tmp_path / "clone")

    out, err = await dev(checkout, "test", "tests/unit/test_json.py", "-q", "-p", "no:cacheprovider")
    assert steps(err) == ["making", "installing"]
    assert re.search(r"^\d+ passed in ", out, re.MULTILINE), out
    assert (checkout / ".venv" / "bin" / "banking").exists()

    out, err = await dev(checkout, "--version")
    assert steps(err) == []
    assert out.startswith("just ")

    with (checkout / "examples" / "pyproject.toml").open("a") as pyproject:
        pyproject.write("# changed\n")
    out, err = await dev(checkout, "--version")
    assert steps(err) == ["installing"]
    assert out.startswith("just ")
