"""List accounts: a projection into an ``accounts`` table, and its queries."""
