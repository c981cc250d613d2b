"""The banking example against a real PostgreSQL: shells, read models, concurrency, the CLI."""
