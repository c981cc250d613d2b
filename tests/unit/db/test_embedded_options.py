"""The settings a server's command line gives: what eventbus reads from ``postmaster.opts``
to tell whether a running embedded server was started private."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from eventbus._db._embedded import command_line_settings
from eventbus.testing import EmbeddedServer


def recorded(*args: str) -> list[str]:
    """A command line as PostgreSQL writes it to postmaster.opts, read back."""
    return shlex.split(" ".join(['"/opt/pg/bin/postgres"', *(f'"{arg}"' for arg in args)]))


def test_the_privacy_options_read_back_as_the_settings_they_give(tmp_path: Path) -> None:
    server = EmbeddedServer(tmp_path / "embedded")
    settings = command_line_settings(recorded("-D", str(server.pgdata), *server.safety_options()))
    assert settings == {
        "data_directory": str(server.pgdata),
        "listen_addresses": "",
        "unix_socket_directories": str(server.socket_dir),
        "unix_socket_permissions": "0700",
        "port": "5432",
        "hba_file": str(server.pgdata / "eventbus_hba.conf"),
    }


@pytest.mark.parametrize(
    ("extra", "listen"),
    [
        (["-c", "listen_addresses=*"], "*"),
        (["-clisten_addresses=127.0.0.1"], "127.0.0.1"),
        (["--listen-addresses=0.0.0.0"], "0.0.0.0"),
        (["-h", "::"], "::"),
        (["-h127.0.0.1"], "127.0.0.1"),
        (["-i"], "*"),
    ],
)
def test_a_later_option_that_opens_tcp_wins_over_the_privacy_options(extra: list[str], listen: str) -> None:
    settings = command_line_settings(recorded("-c", "listen_addresses=", *extra))
    assert settings["listen_addresses"] == listen


def test_short_options_for_the_port_and_the_socket_folder_are_read() -> None:
    settings = command_line_settings(recorded("-p5433", "-k", "/tmp", "-c", "hba_file=/x"))
    assert settings == {"port": "5433", "unix_socket_directories": "/tmp", "hba_file": "/x"}
