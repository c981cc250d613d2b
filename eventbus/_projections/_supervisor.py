"""The restart policy for supervised tasks: exponential backoff, then give up."""

from __future__ import annotations

import random

import attrs

from .._errors import ProjectionError
from .._values import is_number

BACKOFF_INITIAL = 0.1
"""Seconds before the first restart."""

BACKOFF_MAX = 10.0
"""The longest wait between restarts."""

MAX_RESTARTS = 5
"""Restarts in a row (without progress) before a task is marked failed."""


MAX_DELAY = 86_400.0
"""The longest backoff a policy may name, in seconds (a day)."""


def _whole(name: str, value: object) -> None:
    if type(value) is not int or value < 0:
        raise ProjectionError(f"RestartPolicy: {name} must be a whole number >= 0, not {value!r}")


def _seconds(name: str, value: object) -> None:
    if not is_number(value) or not 0 < value <= MAX_DELAY:
        raise ProjectionError(f"RestartPolicy: {name} must be a number of seconds above 0, up to a day, not {value!r}")


@attrs.frozen
class RestartPolicy:
    """How a supervised task is restarted after it fails.

    Attributes:
        max_restarts: failures in a row after which the task is ``failed``; a
            failure after progress (a batch applied) starts the count anew.
        initial: seconds before the first restart; each further one doubles,
            up to ``maximum``, with up to 10% jitter so that several processes
            do not retry in step.
    """

    max_restarts: int = attrs.field(default=MAX_RESTARTS, validator=lambda _, __, v: _whole("max_restarts", v))
    initial: float = attrs.field(default=BACKOFF_INITIAL, validator=lambda _, __, v: _seconds("initial", v))
    maximum: float = attrs.field(default=BACKOFF_MAX, validator=lambda _, __, v: _seconds("maximum", v))

    def delay(self, failures: int) -> float:
        """Seconds to wait before restart number ``failures`` (1-based)."""
        base: float = min(self.maximum, self.initial * 2.0 ** max(0, failures - 1))
        return base * (1 + random.random() / 10)  # noqa: S311 - jitter, not secrecy

    def gives_up(self, failures: int) -> bool:
        """Whether ``failures`` in a row is one too many."""
        return failures > self.max_restarts
