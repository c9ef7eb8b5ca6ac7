"""Benchmarks that print figures; `servers.py` also starts the server processes of the tests (tests/servers.py)."""
