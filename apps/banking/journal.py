"""The journal of acknowledged commands, and the check that each one's events are stored.

The simulator appends one JSON line per command the bank acknowledged, the
moment it is acknowledged. After a run (after crashes, kills and restarts
too) :func:`unstored` tells which acknowledged commands' events the store
does not hold: there must be none.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from eventbus import EventRecord

from .app import Receipt, account_ids_of


class Journal:
    """Acknowledged commands, one JSON line each, appended as they are acknowledged.

    A line: ``{"kind", "command_id", "accounts": [ids], "amount": "12.34" or
    null, "event_ids": [uuids], "positions": [ints], "pid"}``. Each line is
    one ``write`` to a file opened with ``O_APPEND``, so several processes
    may share one journal, and a line is on disk (in the OS) once written:
    a process killed later loses none.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._path = os.fspath(path)
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def record(self, receipt: Receipt) -> None:
        """Append the line of an acknowledged command; blocks only on the OS write.

        Raises:
            OSError: the write failed (a full disk): it names the journal's file.
        """
        amount = getattr(receipt.command, "amount", None)
        line = {
            "kind": receipt.kind,
            "command_id": str(receipt.command.command_id),
            "accounts": list(account_ids_of(receipt.command)),
            "amount": None if amount is None else f"{amount:f}",
            "event_ids": [str(event_id) for event_id in receipt.event_ids],
            "positions": [record.sequence_number for record in receipt.records],
            "pid": os.getpid(),
        }
        try:
            os.write(self._fd, (json.dumps(line, separators=(",", ":")) + "\n").encode())
        except OSError as exc:  # (os.write names no file: the command would blame standard output)
            raise OSError(exc.errno, exc.strerror, self._path) from None

    def close(self) -> None:
        """Close the file."""
        os.close(self._fd)

    @staticmethod
    def read(path: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
        """The lines of a journal; a torn last line (a write cut short) is skipped."""
        with Path(path).open() as lines:
            for line in lines:
                try:
                    yield json.loads(line)
                except json.JSONDecodeError:
                    continue


def unstored(lines: Iterable[dict[str, Any]], records: Iterable[EventRecord]) -> list[str]:
    """What is wrong with the journal's acknowledged commands, given every stored record.

    An acknowledged command is fine when each of its event ids is stored at
    the position the acknowledgment gave. Returns one line per problem;
    empty when every acknowledged command's events are stored.
    """
    positions = {str(record.event_id): record.sequence_number for record in records}
    problems = []
    for line in lines:
        for event_id, position in zip(line["event_ids"], line["positions"], strict=True):
            stored = positions.get(event_id)
            if stored is None:
                problems.append(f"{line['kind']} {line['command_id']}: event {event_id} is not stored")
            elif stored != position:
                problems.append(
                    f"{line['kind']} {line['command_id']}: event {event_id} is at {stored}, acknowledged at {position}"
                )
    return problems
