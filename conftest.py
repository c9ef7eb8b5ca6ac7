"""Registers the shared fixtures of tests/servers.py (real server processes,
PostgreSQL, Redis) for every test module, so none imports them by name."""

pytest_plugins = ["tests.servers"]
