"""Read one account: balance, status and history, folded from its events."""
