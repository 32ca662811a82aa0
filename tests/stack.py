"""Real processes for the tests: a Prefect server, a worker and the API, each on a free port."""

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import httpx
import psycopg
from sqlalchemy.engine import make_url

from control_plane.supervisor import as_user

T = TypeVar("T")

POSTGRES_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
# Where tests serve the HTTP APIs that connectors read: a loopback address of its own, so the
# rest of loopback can stay out of the connectors' reach.
PUBLIC_TEST_HOST = "127.0.0.2"
START_POSTGRES = "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start"


class PostgresMissing(RuntimeError):
    """The machine's PostgreSQL does not answer; the message says how to start it."""


@contextmanager
def postgres_database(name: str, driver: str = "postgresql+psycopg") -> Iterator[str]:
    """A fresh database on the machine's PostgreSQL, dropped afterwards; yields its URL."""
    try:
        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True, connect_timeout=5) as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError as error:
        raise PostgresMissing(
            f"PostgreSQL is not reachable at {POSTGRES_ADMIN_URL} ({error}). "
            f"Start it with: {START_POSTGRES}"
        ) from error
    try:
        yield (
            make_url(POSTGRES_ADMIN_URL)
            .set(drivername=driver, database=name)
            .render_as_string(hide_password=False)
        )
    finally:
        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(
    check: Callable[[], T | None], *, timeout: float, what: str, interval: float = 0.2
) -> T:
    """Poll `check` until it returns something truthy, or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


class Process:
    """A child process in its own process group, with its output in a log file."""

    def __init__(
        self,
        name: str,
        command: list[str],
        env: Mapping[str, str],
        log: Path,
        user: str | None = None,
    ) -> None:
        self.name = name
        self.command = command
        self.env = dict(env)
        self.log = log
        self.user = user  # whom to run it as, when not as this process's user
        self.popen: subprocess.Popen[bytes] | None = None

    def start(self) -> "Process":
        with self.log.open("ab") as out:
            self.popen = subprocess.Popen(
                self.command,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                **as_user(self.user),
            )
        return self

    def wait_healthy(self, url: str, timeout: float = 120) -> None:
        def healthy() -> bool:
            assert self.popen is not None
            if self.popen.poll() is not None:
                tail = self.log.read_text(errors="replace")[-3000:]
                raise AssertionError(f"{self.name} exited with {self.popen.returncode}:\n{tail}")
            return answers(url)

        wait_for(healthy, timeout=timeout, what=f"{self.name} at {url}")

    def kill(self) -> None:
        """SIGKILL, as a crash would: nothing gets to clean up."""
        assert self.popen is not None
        os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait()

    def stop(self) -> None:
        if self.popen is None or self.popen.poll() is not None:
            return
        os.killpg(self.popen.pid, signal.SIGTERM)
        try:
            self.popen.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait()


@contextmanager
def running(process: Process, health_url: str | None = None) -> Iterator[Process]:
    process.start()
    try:
        if health_url:
            process.wait_healthy(health_url)
        yield process
    finally:
        process.stop()


def _prefect_env(home: Path, extra_env: Mapping[str, str]) -> dict[str, str]:
    home.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **extra_env, "PREFECT_HOME": str(home)}
    env.pop("PREFECT_API_URL", None)
    return env


def prefect_server(
    home: Path, port: int, extra_env: Mapping[str, str], workers: int = 1
) -> Process:
    """Prefect's server; with several `workers`, its API alone (its services run apart), on a
    database `control_plane.cli.migrate_prefect` prepared."""
    command = [sys.executable, "-m", "prefect", "server", "start"]
    command += ["--host", "127.0.0.1", "--port", str(port)]
    if workers > 1:
        command += ["--workers", str(workers), "--no-services"]
    return Process("prefect server", command, _prefect_env(home, extra_env), home / "server.log")


def prefect_services(home: Path, extra_env: Mapping[str, str]) -> Process:
    """Prefect's services (scheduler, triggers, event persister, ...) in a process of their own."""
    command = [sys.executable, "-m", "prefect", "server", "services", "start"]
    return Process(
        "prefect services", command, _prefect_env(home, extra_env), home / "services.log"
    )


def api_server(env: Mapping[str, str], port: int, log: Path, workers: int = 1) -> Process:
    command = [sys.executable, "-m", "uvicorn", "control_plane.api.app:app"]
    command += ["--host", "127.0.0.1", "--port", str(port), "--workers", str(workers)]
    return Process("API", command, {**os.environ, **env}, log)


def worker(env: Mapping[str, str], pool: str, log: Path) -> Process:
    command = [sys.executable, "-m", "prefect", "worker", "start", "--type", "process"]
    command += ["--pool", pool]
    return Process("worker", command, {**os.environ, **env}, log)
