"""Accounts: keys at rest, passwords, sessions and app passwords, account creation."""
