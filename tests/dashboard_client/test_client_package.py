"""dashboard_client as a package of its own: it imports nothing of Django or the
server, and `pip install ./dashboard_client` into a fresh virtual environment
without Django gives a client that logs in, writes and receives pushes, and a
working `dashboard-collect`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import venv
from pathlib import Path

import pytest

from tests.servers import PROJECT_DIR, live_server

PACKAGE_DIR = PROJECT_DIR / "dashboard_client"
SERVER_PACKAGES = ("django", "channels", "daphne", "accounts", "metrics", "realtime", "dashboard_project")
PIP_TIMEOUT = 120.0
SCRIPT_TIMEOUT = 30.0


def clean_env() -> dict[str, str]:
    """The environment without anything that would put the project on the path."""
    return {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONPATH", "VIRTUAL_ENV", "DJANGO_SETTINGS_MODULE", "PYTHONHOME")
    }


def test_package_imports_nothing_of_django_or_the_server(tmp_path):
    # Every module of the package, imported in a fresh interpreter that sees
    # the repository (it may have Django installed): none of them may load it.
    script = textwrap.dedent(f"""
        import importlib, json, pkgutil, sys
        import dashboard_client
        modules = ["dashboard_client"] + [
            "dashboard_client." + info.name for info in pkgutil.iter_modules(dashboard_client.__path__)]
        for name in modules:
            importlib.import_module(name)
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in {SERVER_PACKAGES!r})
        print(json.dumps({{"modules": modules, "file": dashboard_client.__file__, "loaded": loaded}}))
    """)
    run = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={**clean_env(), "PYTHONPATH": str(PROJECT_DIR)},
        timeout=SCRIPT_TIMEOUT,
    )
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert Path(report["file"]).resolve() == PACKAGE_DIR / "__init__.py"
    assert {
        "dashboard_client.connection",
        "dashboard_client.collector",
        "dashboard_client.cli",
        "dashboard_client.durations",
    } <= set(report["modules"])
    assert report["loaded"] == []


# Runs inside the fresh environment: connect, log in, subscribe, insert, get the push.
CLIENT_SCRIPT = """
import asyncio, importlib.util, json, sys

from dashboard_client import DashboardClient, DashboardError


async def main(url):
    async with DashboardClient(url, "admin-token", request_timeout=10) as client:
        session = await client.whoami()
        pushes = []
        sub = await client.subscribe("metrics-by-name", {"name": "fresh-venv"}, pushes.append)
        record = await client.insert("metrics", {"name": "fresh-venv", "value": 42, "unit": "%",
                                                 "timestamp": 1706745600000})
        await sub.wait_for(lambda data: len(data) == 1, timeout=10)
        try:
            await client.insert("no-such-bucket", {})
        except DashboardError as error:
            refused = error.code
        print(json.dumps({
            "django": importlib.util.find_spec("django") is not None,
            "file": sys.modules["dashboard_client"].__file__,
            "session": session, "record": record, "results": pushes, "refused": refused,
        }))


asyncio.run(main(sys.argv[1]))
"""


def run_in(cwd: Path, *argv: object, timeout: float = SCRIPT_TIMEOUT) -> subprocess.CompletedProcess[str]:
    """Runs a program of the fresh environment with nothing of the project on its path."""
    return subprocess.run(
        [str(arg) for arg in argv], cwd=cwd, capture_output=True, text=True, env=clean_env(), timeout=timeout
    )


@pytest.mark.multiprocess
def test_installs_into_a_fresh_environment_without_django(tmp_path, template_database):
    # A copy of the package directory alone: the install may rely on nothing
    # else in the repository (and leaves no build files in it).
    source = tmp_path / "source"
    shutil.copytree(PACKAGE_DIR, source, ignore=shutil.ignore_patterns("__pycache__", "build", "*.egg-info"))
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python, bin_dir = env_dir / "bin" / "python", env_dir / "bin"
    # websockets comes from pip's configured index, as any user would get it.
    install = run_in(tmp_path, python, "-m", "pip", "install", "--quiet", source, timeout=PIP_TIMEOUT)
    assert install.returncode == 0, install.stdout + install.stderr
    listed = run_in(tmp_path, python, "-m", "pip", "list", "--format=json", timeout=PIP_TIMEOUT)
    installed = {p["name"].lower(): p["version"] for p in json.loads(listed.stdout)}
    assert installed["dashboard-client"] == "1.0.0"
    assert installed["websockets"].startswith("15.")
    assert "django" not in installed
    assert "channels" not in installed

    server = live_server(tmp_path / "server", template_database)
    try:
        script = tmp_path / "client_script.py"
        script.write_text(CLIENT_SCRIPT)
        run = run_in(tmp_path, python, script, server.url)
        assert run.returncode == 0, run.stderr
        report = json.loads(run.stdout)
        assert report["django"] is False
        assert Path(report["file"]).is_relative_to(env_dir)  # the installed copy, not the repository's
        assert report["session"]["roles"] == ["admin"]
        record = report["record"]
        assert {k: record[k] for k in ("name", "value", "unit", "timestamp")} == {
            "name": "fresh-venv",
            "value": 42,
            "unit": "%",
            "timestamp": 1706745600000,
        }
        # The initial (empty) result, then the push with the new record.
        assert report["results"] == [[], [record]]
        assert report["refused"] == "BUCKET_NOT_DEFINED"

        # The console script: one sample, printed as stored; a viewer is refused.
        collect = [bin_dir / "dashboard-collect", "--url", server.url, "--once", "--interval", "100ms"]
        stored = run_in(tmp_path, *collect, "--token", "admin-token", "--host-label", "fresh")
        assert stored.returncode == 0, stored.stderr
        assert "host.fresh.memory.used " in stored.stdout
        refused = run_in(tmp_path, *collect, "--token", "viewer-token")
        assert refused.returncode == 1
        assert refused.stderr.startswith("dashboard-collect: error: FORBIDDEN: ")
    finally:
        server.stop()
