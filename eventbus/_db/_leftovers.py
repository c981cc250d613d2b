"""What an interrupted first start of the embedded server leaves running.

A first start killed while ``initdb`` runs leaves ``initdb`` running as an
orphan (it finishes its work on the folder after its parent is gone), with the
single-user server it drives; an earlier version of eventbus then even started
a server on the unfinished folder. Before the folder is made again, they end.
Everything here blocks.
"""

from __future__ import annotations

from pathlib import Path

import psutil

from .._errors import StoreUnavailable

LEFTOVER_WAIT = 10.0
"""Seconds to wait for the processes of an unfinished start to end once killed."""


def postmaster_of(pgdata: Path, pid: int | None) -> psutil.Process | None:
    """The server running on ``pgdata`` whose ``postmaster.pid`` names ``pid``.

    Checked to be a server working in that folder: a stale file may name a
    process that took the number since.
    """
    if pid is None:
        return None
    try:
        process = psutil.Process(pid)
        if process.name() == "postgres" and Path(process.cwd()) == pgdata:
            return process
    except psutil.Error:
        pass
    return None


def _started_on(process: psutil.Process, pgdata: Path) -> bool:
    name = process.info["name"]
    if name == "initdb":
        return str(pgdata) in (process.info["cmdline"] or [])
    # initdb names the folder to the servers it runs in their environment only.
    return bool(name == "postgres" and process.environ().get("PGDATA") == str(pgdata))


def end_leftovers(pgdata: Path, postmaster_pid: int | None) -> None:
    """Kill every process working on the unfinished cluster ``pgdata``, and wait for them.

    Raises:
        StoreUnavailable: some did not end within ``LEFTOVER_WAIT``.
    """
    postmaster = postmaster_of(pgdata, postmaster_pid)
    found = [] if postmaster is None else [postmaster]
    for process in psutil.process_iter(["name", "cmdline"]):
        try:
            if _started_on(process, pgdata):
                found.append(process)
        except psutil.Error:
            continue
    for process in list(found):
        try:
            found += process.children(recursive=True)
        except psutil.Error:
            continue
    for process in found:
        try:
            process.kill()
        except psutil.Error:
            continue
    _, alive = psutil.wait_procs(found, timeout=LEFTOVER_WAIT)
    if alive:
        raise StoreUnavailable(
            f"processes {sorted(p.pid for p in alive)} of an unfinished start still use {pgdata}; "
            "end them, then start again"
        )
