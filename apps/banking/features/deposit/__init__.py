"""Deposit money into an open account."""
