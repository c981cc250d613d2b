"""What a ``postgres`` command line sets: the embedded server checks that a
running server was started with its privacy options (``_embedded.py``)."""

from __future__ import annotations

# postgres's short options that set a setting (-i: listen on every address).
_SHORT_OPTIONS = {"-h": "listen_addresses", "-k": "unix_socket_directories", "-p": "port", "-D": "data_directory"}


def command_line_settings(args: list[str]) -> dict[str, str]:
    """The settings a ``postgres`` command line (program first) gives, the last of each winning.

    Reads ``-c name=value``, ``--name=value`` and the short options that set
    settings (``-h``, ``-k``, ``-p``, ``-i``), as the server does.
    """
    settings: dict[str, str] = {}
    rest = list(args[1:])
    while rest:
        arg = rest.pop(0)
        if arg == "-i":
            settings["listen_addresses"] = "*"
        elif arg[:2] == "-c" or arg[:2] in _SHORT_OPTIONS:
            value = arg[2:] or (rest.pop(0) if rest else "")
            if arg[:2] == "-c":
                name, _, value = value.partition("=")
            else:
                name = _SHORT_OPTIONS[arg[:2]]
            settings[name.replace("-", "_")] = value
        elif arg.startswith("--") and "=" in arg:
            name, _, value = arg[2:].partition("=")
            settings[name.replace("-", "_")] = value
    return settings
