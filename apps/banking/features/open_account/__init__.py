"""Open an account: owner, type, currency and an optional first deposit."""
