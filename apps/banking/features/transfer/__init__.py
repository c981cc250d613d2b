"""Move money between two open accounts of the same currency."""
