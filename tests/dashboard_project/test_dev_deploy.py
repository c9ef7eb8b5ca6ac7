"""The deploy of docs/deploy.md as written, and `./dev`'s refusals (issue 16).

- `./dev test` fails (exit 1, with the URL and the reason) when PostgreSQL
  was asked for (TEST_POSTGRES_URL or CI=true) and is not usable; `./dev serve`
  and `./dev migrate` refuse to run without a set-up .venv. These run the real
  script and stop before any suite, so they take a second.
- The two-group deploy (multiprocess): on a fresh PostgreSQL database, two
  `./dev migrate` started together both succeed (one applies, one waits on
  the advisory lock and finds nothing to do); then two `./dev serve` groups
  started at the same moment on their own ports (one with two workers and
  JSON logs) both print their listening line and nothing alarming, and a
  write through one group reaches a viewer on the other through Redis.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from bench.servers import Process, create_database, database_url, drop_database, free_port, postgres_connect
from metrics.management.commands.migrate import LOCK_KEY
from tests.servers import (  # noqa: F401  (template_database: a fixture)
    MACHINE_REDIS_URL,
    POSTGRES_URL,
    PROJECT_DIR,
    open_client,
    push_frame,
    redis_reachable,
    template_database,
    unavailable,
)

DEV = str(PROJECT_DIR / "dev")


def ours(**env: str) -> dict[str, str]:
    """The test process's environment without the project's settings, then `env`."""
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DJANGO_", "DASHBOARD_", "TEST_POSTGRES", "UVICORN_"))
        and k not in {"CI", "DATABASE_URL", "REDIS_URL", "WEB_CONCURRENCY", "PORT", "HOST"}
    }
    base.update(env)
    return base


def dev(*args: str, cwd: Path = PROJECT_DIR, timeout: float = 60, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(cwd / "dev"), *args],
        cwd=cwd,
        env=ours(**env),
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def missing_database_url(password: str = "") -> str:
    name = f"missing_{secrets.token_hex(4)}"
    url = database_url(name, POSTGRES_URL)
    if password:
        url = url.replace("postgres@", f"postgres:{password}@", 1)
    return url


REQUIRED = "./dev test: PostgreSQL is required (CI=true or TEST_POSTGRES_URL is set) but not usable; see above\n"


@pytest.mark.parametrize("ci", ["", "true"])
def test_dev_test_fails_when_the_asked_for_database_is_missing(ci):
    url = missing_database_url()
    started = time.monotonic()
    result = dev("test", "--collect-only", "-q", TEST_POSTGRES_URL=url, CI=ci)
    took = time.monotonic() - started
    assert result.returncode == 1, result.stdout + result.stderr
    name = url.rsplit("/", 1)[1]
    assert (
        f'is not usable: connection failed: connection to server at "127.0.0.1", port 5432 failed: FATAL:  database "{name}" does not exist'
        in result.stderr
    )
    assert result.stderr.startswith(f"PostgreSQL at postgresql://postgres@127.0.0.1:5432/{name} is not usable")
    assert result.stderr.endswith(REQUIRED)
    # Before lint, types and the SQLite pass: nothing ran.
    assert result.stdout == "" and took < 15


def test_dev_test_shows_the_url_without_its_password():
    url = missing_database_url(password="s3cret-pw")
    result = dev("test", "-q", TEST_POSTGRES_URL=url, CI="true")
    assert result.returncode == 1 and result.stderr.endswith(REQUIRED)
    assert "s3cret-pw" not in result.stderr + result.stdout
    assert "PostgreSQL at postgresql://postgres@127.0.0.1:5432/missing_" in result.stderr


@pytest.mark.parametrize("command", ["serve", "migrate"])
def test_serve_and_migrate_refuse_without_a_set_up_venv(tmp_path, command):
    # A checkout without .venv: the script alone in a directory of its own.
    shutil.copy(DEV, tmp_path / "dev")
    result = dev(command, cwd=tmp_path)
    assert (result.returncode, result.stdout, result.stderr) == (
        2,
        "",
        f"./dev {command}: no usable .venv (run ./dev setup first)\n",
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dev"]  # nothing installed


def test_serve_refuses_several_workers_without_redis():
    result = dev("serve", WEB_CONCURRENCY="2")
    assert result.returncode == 2
    assert result.stderr.endswith(
        "WEB_CONCURRENCY=2 needs REDIS_URL: the in-memory layer cannot reach other processes\n"
    )


def test_serve_refuses_a_database_with_pending_migrations(tmp_path):
    # A fresh SQLite file: nothing applied. Nothing starts, nothing is applied.
    result = dev("serve", DATABASE_URL=f"sqlite:///{(tmp_path / 'fresh.sqlite3').resolve()}")
    assert (result.returncode, result.stdout, result.stderr) == (
        2,
        "",
        "./dev serve: the database has unapplied migrations: run ./dev migrate first\n",
    )


# An option uvicorn refuses at once: `./dev serve` that gets as far as uvicorn
# stops there (exit 2, uvicorn's usage), with no server left running.
NOT_AN_OPTION = "--not-an-option"
UVICORN_REFUSAL = "Error: No such option '--not-an-option'."


def test_serve_starts_on_a_migrated_database(tmp_path, template_database):  # noqa: F811
    shutil.copyfile(template_database / "db.sqlite3", tmp_path / "db.sqlite3")
    result = dev("serve", NOT_AN_OPTION, DATABASE_URL=f"sqlite:///{(tmp_path / 'db.sqlite3').resolve()}")
    assert result.returncode == 2
    assert "./dev serve" not in result.stderr
    assert result.stderr.rstrip().endswith(UVICORN_REFUSAL), result.stderr


def test_serve_starts_when_the_migrations_cannot_be_checked():
    # A database not up yet: the check fails, the server starts as before and
    # /readyz answers 503 until the database is there.
    result = dev("serve", NOT_AN_OPTION, DATABASE_URL=f"postgres://postgres@127.0.0.1:{free_port()}/nothing")
    assert result.returncode == 2
    first, *_ = result.stderr.splitlines()
    assert re.fullmatch(
        r"\./dev serve: could not check the migrations \(django\.db\.utils\.OperationalError: connection failed: "
        r".*Connection refused\); starting anyway, /readyz tells when the database is ready",
        first,
    ), first
    assert result.stderr.rstrip().endswith(UVICORN_REFUSAL), result.stderr


# --- the two-group deploy ---------------------------------------------------------------


@pytest.fixture
def fresh_database():
    """A PostgreSQL database nobody has migrated; dropped afterwards."""
    pytest.importorskip("psycopg")
    admin = database_url("postgres", POSTGRES_URL)
    name = f"deploy_{secrets.token_hex(5)}"
    try:
        create_database(admin, name)
    except Exception as error:
        unavailable(f"PostgreSQL not reachable at {admin}: {error}")
    try:
        yield database_url(name, POSTGRES_URL)
    finally:
        drop_database(admin, name)


def production_env(database: str) -> dict[str, str]:
    """docs/deploy.md's variables, on loopback and plain HTTP."""
    if not redis_reachable(MACHINE_REDIS_URL):
        unavailable(f"no Redis at TEST_REDIS_URL ({MACHINE_REDIS_URL})")
    return ours(
        DJANGO_DEBUG="0",
        DJANGO_SECRET_KEY=secrets.token_urlsafe(50),
        DJANGO_ALLOWED_HOSTS="127.0.0.1,localhost",
        DJANGO_CSRF_TRUSTED_ORIGINS="https://dashboard.example.com",
        DJANGO_SECURE_SSL_REDIRECT="0",
        DATABASE_URL=database,
        REDIS_URL=MACHINE_REDIS_URL,
        DASHBOARD_CHANNEL_PREFIX="test-" + database.rsplit("/", 1)[1],
        DASHBOARD_HEARTBEAT_SECONDS="3600",
        PYTHONUNBUFFERED="1",
    )


def concurrent_migrations(env: dict[str, str]) -> list[subprocess.CompletedProcess]:
    runs = [
        subprocess.Popen(
            [DEV, "migrate"],
            cwd=PROJECT_DIR,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    done = []
    for run in runs:
        out, err = run.communicate(timeout=180)
        done.append(subprocess.CompletedProcess(run.args, run.returncode, out, err))
    return done


def seed(env: dict[str, str]) -> None:
    # The demo tokens on a throwaway database (--force: DEBUG is off).
    result = subprocess.run(
        [str(PROJECT_DIR / ".venv/bin/python"), "manage.py", "seed_demo", "--force"],
        cwd=PROJECT_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


LISTENING = re.compile(r"Uvicorn running on http://127\.0\.0\.1:(\d+) \(Press CTRL\+C to quit\)")


@pytest.mark.multiprocess
async def test_two_groups_start_together_on_a_fresh_database(fresh_database, tmp_path):
    env = production_env(fresh_database)

    started = time.monotonic()
    migrations = await asyncio.to_thread(concurrent_migrations, env)
    migrate_seconds = time.monotonic() - started
    for run in migrations:
        assert (run.returncode, run.stderr) == (0, ""), run.stdout + run.stderr
    applied = [run for run in migrations if "Applying metrics.0001_initial... OK" in run.stdout]
    idle = [run for run in migrations if run.stdout.rstrip().endswith("No migrations to apply.")]
    assert (len(applied), len(idle)) == (1, 1), [run.stdout for run in migrations]
    waited = "Another migrate run holds the lock on this database; waiting for it." in idle[0].stdout
    seed(env)

    ports = {"A": free_port(), "B": free_port()}
    groups = {
        # Group A: two workers and JSON logs; group B: one worker, plain logs.
        "A": Process(
            "group-A",
            [DEV, "serve"],
            {**env, "PORT": str(ports["A"]), "WEB_CONCURRENCY": "2", "DJANGO_LOG_FORMAT": "json"},
            tmp_path / "A.log",
            ports["A"],
            start_timeout=60,
            stop_timeout=15,
        ),
        "B": Process(
            "group-B",
            [DEV, "serve"],
            {**env, "PORT": str(ports["B"])},
            tmp_path / "B.log",
            ports["B"],
            start_timeout=60,
        ),
    }
    started = time.monotonic()
    for group in groups.values():
        group.launch()
    try:
        listening = {}
        for name, group in groups.items():
            await asyncio.to_thread(group.wait_until_listening)
            listening[name] = time.monotonic() - started

        viewer = await open_client(f"ws://127.0.0.1:{ports['B']}/ws/", "viewer@B", "viewer-token")
        admin = await open_client(f"ws://127.0.0.1:{ports['A']}/ws/", "admin@A", "admin-token")
        sid, initial = await viewer.subscribe("metric-count")
        assert initial == 0
        record = await admin.ok(
            "store.insert", bucket="metrics", data={"name": "deploy.check", "value": 1.5, "timestamp": 1}
        )
        assert await viewer.push() == push_frame(sid, 1)
        _, rows = await viewer.subscribe("latest-metrics", {"n": 1})
        assert rows == [record]
        await viewer.close()
        await admin.close()
    finally:
        for group in groups.values():
            group.stop()

    logs = {name: group.log() for name, group in groups.items()}
    for name, log in logs.items():
        assert [int(port) for port in LISTENING.findall(log)] == [ports[name]], log
        for alarming in ("Traceback", "ERROR", "WARNING", "already exists"):
            assert alarming not in log, f"group {name}: {alarming}\n{log}"
    # Group A's every line is one JSON object: the supervisor's and both workers'.
    lines = [line for line in logs["A"].splitlines() if not line.startswith("--- starting ")]
    entries = [json.loads(line) for line in lines]
    assert {entry["level"] for entry in entries} == {"INFO"}
    assert len({entry["process"] for entry in entries}) == 3, lines  # supervisor and two workers
    assert sum(entry["message"] == "Application startup complete." for entry in entries) == 2
    print(
        f"\ntwo concurrent migrates on a fresh database: {migrate_seconds:.1f} s (second waited on the lock: {waited}); "
        f"listening after launch: A (2 workers) {listening['A']:.2f} s, B {listening['B']:.2f} s"
    )


def test_migrate_gives_up_with_a_message_when_another_run_holds_the_lock_too_long(fresh_database):
    env = ours(DATABASE_URL=fresh_database, PYTHONUNBUFFERED="1")
    with postgres_connect(fresh_database) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", [LOCK_KEY])
        result = dev("migrate", "--lock-timeout", "0.5", **env)
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stdout == "Another migrate run holds the lock on this database; waiting for it.\n"
    assert result.stderr == "CommandError: Another migrate run held the lock for more than 0.5 s.\n"
    # Nothing was applied while waiting.
    with postgres_connect(fresh_database) as conn:
        assert conn.execute("SELECT to_regclass('django_migrations')").fetchone() == (None,)
