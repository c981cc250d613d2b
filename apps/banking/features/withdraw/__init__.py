"""Withdraw money from an open account, never below zero."""
