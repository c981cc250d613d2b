# eventbus tasks. `just --list` shows them all.

set positional-arguments

python := if path_exists(".venv/bin/python") == "true" { ".venv/bin/python" } else { "python" }

# Run the whole test suite against an embedded PostgreSQL (or EVENTBUS_TEST_ADMIN_DSN).
test *args:
    {{python}} -m pytest {{args}}

# ruff, and mypy --strict on the library, the bank, the dashboard and ./dev.
lint:
    {{python}} -m ruff check eventbus apps tui chaos tests bench dev
    {{python}} -m ruff format --check eventbus apps tui dev
    {{python}} -m mypy eventbus apps tui dev

# Format the code.
fmt:
    {{python}} -m ruff format eventbus apps tui tests bench
    {{python}} -m ruff check --fix eventbus apps tui tests bench

# Benchmarks: `just bench` runs all, `just bench store` one of them.
bench *which:
    {{python}} -m bench {{which}}

# The bank: the interactive menu, or a subcommand (`just cli list`); embedded database unless EVENTBUS_DSN is set.
[no-exit-message]
cli *args:
    {{python}} -m tui "$@"

# The dashboard over the bank (`just banking`); embedded database unless EVENTBUS_DSN is set.
[no-exit-message]
banking *args:
    {{python}} -m tui dashboard "$@"

# Chaos: simulators killed, the server crashed, connections ended, then every guarantee checked (about a minute; `--minutes 10` for the long form, `--seed N` to repeat a run).
chaos *args:
    {{python}} -m chaos "$@"
