"""KEEP's tests; shared helpers are in :mod:`tests.support` (the repository root is on pytest's path)."""
