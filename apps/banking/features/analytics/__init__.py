"""Analytics: openings, deposits, withdrawals and transfers per month, as a projection."""
