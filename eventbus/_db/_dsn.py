"""Connection strings: where they come from, and keeping their passwords out of every output."""

from __future__ import annotations

import os
import re
from urllib.parse import unquote


def dsn_from_environment() -> str | None:
    """The connection string the environment names, if any.

    ``EVENTBUS_DSN`` first, then ``DATABASE_URL``; empty values count as unset.
    """
    for name in ("EVENTBUS_DSN", "DATABASE_URL"):
        value = os.environ.get(name, "").strip()
        if value:
            return value
    return None


_URL_PASSWORD = re.compile(r"://[^:/@?#]*:([^@/?#]*)@")
_KEY_PASSWORD = re.compile(r"(?i)password\s*=\s*('[^']*'|[^\s&]+)")


def _passwords(dsn: str) -> list[str]:
    found = [m.group(1) for m in _URL_PASSWORD.finditer(dsn)]
    found += [m.group(1).strip("'") for m in _KEY_PASSWORD.finditer(dsn)]
    found += [unquote(p) for p in found]
    return sorted({p for p in found if p}, key=len, reverse=True)


def redact_dsn(dsn: str) -> str:
    """The connection string with any password replaced by ``***``."""
    return scrub(dsn, dsn)


def scrub(text: str, dsn: str) -> str:
    """``text`` with every password that ``dsn`` holds replaced by ``***``."""
    for password in _passwords(dsn):
        text = text.replace(password, "***")
    return text
