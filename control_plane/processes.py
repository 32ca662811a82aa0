"""Start the stack's processes, wait until they answer, and stop them: the one place that does it
for `control-plane up` (whose `control_plane.supervisor` restarts them), the tests' fixtures and
the benchmarks.

- Ports: `free_port`, `listens_on`, `port_taken`.
- Waiting: `wait_for` polls a check until a deadline; `answers` is the health check of a URL.
- `Process`: a command started in a session of its own, its output in a log (or on ours);
  `wait_until`/`wait_healthy` fail with `StartFailed` when it exits first; `stop` gives it a
  grace period after SIGTERM, then kills it. `running` does all three around a block.
- The stack's commands (Prefect's server and services, a worker, the API, Redis), the same for
  `up` and for the stacks on loopback the tests and benchmarks run (`prefect_server`,
  `prefect_services`, `worker`, `api_server`).

Only the standard library here: the supervisor's watchdog imports it, and should start in no
time.
"""

import errno
import http.client
import os
import pwd
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self, TypeVar

T = TypeVar("T")

# How long `Process.stop` waits after SIGTERM before it kills the process group.
STOP_GRACE_SECONDS = 20.0


class StartFailed(Exception):
    """A process exited, or did not answer, before it was ready."""


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def listens_on(port: int) -> bool:
    """Whether something accepts connections on 127.0.0.1:`port`."""
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def port_taken(host: str, port: int) -> str | None:
    """None when `host:port` can be listened on, else why not, naming the process that listens
    there when this user may see it."""
    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as error:
        return f"cannot be listened on ({error})"
    for family, kind, protocol, _name, address in addresses:
        with socket.socket(family, kind, protocol) as probe:
            # As uvicorn does, so a connection of a stopped server in TIME_WAIT is no obstacle.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
            except OSError as error:
                if error.errno != errno.EADDRINUSE:
                    return f"cannot be listened on ({error})"
                holder = _listener(port)
                return f"is taken by {holder}" if holder else "is taken"
    return None


def _listener(port: int) -> str | None:
    """The process listening on TCP `port` (on any address), from /proc/net and /proc/*/fd."""
    sockets = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            # sl, local address (hex address:port), remote address, state (0A: LISTEN), ..., inode
            fields = row.split()
            if fields[3] == "0A" and int(fields[1].rpartition(":")[2], 16) == port:
                sockets.add(f"socket:[{fields[9]}]")
    with os.scandir("/proc") as entries:  # closed when it returns halfway, too
        for entry in entries:
            if not entry.name.isdigit():
                continue
            try:
                descriptors = os.listdir(f"{entry.path}/fd")
            except OSError:  # another user's
                continue
            for descriptor in descriptors:
                try:
                    if os.readlink(f"{entry.path}/fd/{descriptor}") in sockets:
                        command = Path(entry.path, "cmdline").read_bytes().replace(b"\0", b" ")
                        return f"pid {entry.name} ({command.decode(errors='replace').strip()})"
                except OSError:
                    continue
    return None


def wait_for(
    check: Callable[[], T | None], *, timeout: float, what: str, interval: float = 0.2
) -> T:
    """Poll `check` until it returns something truthy, and return that; TimeoutError after
    `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def answers(url: str) -> bool:
    """Whether `url` answers a GET with 200 within 2 s."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except (OSError, http.client.HTTPException):  # an error status is an HTTPError, an OSError
        return False


def as_user(user: str | None) -> dict[str, Any]:
    """Popen's arguments that run a process as `user`, with that user's group only (without
    `group`, it would keep ours, and pass where our group may); None: as this process."""
    if user is None:
        return {}
    entry = pwd.getpwnam(user)
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


def exit_status(returncode: int) -> str:
    """How a process ended, for a person: `code 1`, `signal SIGKILL`."""
    if returncode < 0:
        return f"signal {signal.Signals(-returncode).name}"
    return f"code {returncode}"


@dataclass
class Process:
    """A command in a process group and session of its own, so that a signal to ours (Ctrl-C in
    a terminal) does not reach it; its output appended to `log`, else on ours."""

    name: str
    command: list[str]
    env: dict[str, str]
    log: Path | None = None
    user: str | None = None  # whom to run it as, when not as this process's user
    popen: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)

    def start(self) -> Self:
        with self.log.open("ab") if self.log else nullcontext() as out:
            self.popen = subprocess.Popen(
                self.command,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT if out else None,
                start_new_session=True,
                **as_user(self.user),
            )
        return self

    def wait_until(self, ready: Callable[[], bool], *, timeout: float) -> None:
        """Wait until `ready()`; StartFailed when the process exits or `timeout` passes first."""

        def answered() -> bool:
            if ready():
                return True
            assert self.popen is not None
            if self.popen.poll() is not None:
                status = exit_status(self.popen.returncode)
                tail = f":\n{self.log.read_text(errors='replace')[-3000:]}" if self.log else ""
                raise StartFailed(f"{self.name} exited with {status} before it answered{tail}")
            return False

        try:
            wait_for(answered, timeout=timeout, what=self.name)
        except TimeoutError as error:
            raise StartFailed(f"{self.name} did not answer within {timeout:.0f} s") from error

    def wait_healthy(self, url: str, timeout: float = 120) -> None:
        """Wait until `url` answers 200 (`wait_until`)."""
        self.wait_until(lambda: answers(url), timeout=timeout)

    def kill(self) -> None:
        """SIGKILL, as a crash would: nothing gets to clean up."""
        assert self.popen is not None
        os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait()

    def stop(self, grace: float = STOP_GRACE_SECONDS) -> None:
        """SIGTERM its process group, and SIGKILL it when still running `grace` seconds later."""
        if self.popen is None or self.popen.poll() is not None:
            return
        os.killpg(self.popen.pid, signal.SIGTERM)
        try:
            self.popen.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait()


@contextmanager
def running(process: Process, health_url: str | None = None) -> Iterator[Process]:
    """The process started (and answering at `health_url`, if given) until the block ends."""
    process.start()
    try:
        if health_url:
            process.wait_healthy(health_url)
        yield process
    finally:
        process.stop()


def prefect_server_command(*, host: str, port: int, workers: int = 1) -> list[str]:
    """Prefect's server; with several `workers`, its API alone (its services run apart, see
    `prefect_services_command`), on a database `control_plane.cli.migrate_prefect` prepared."""
    command = [sys.executable, "-m", "prefect", "server", "start"]
    command += ["--host", host, "--port", str(port)]
    if workers > 1:
        command += ["--workers", str(workers), "--no-services"]
    return command


def prefect_services_command() -> list[str]:
    """Prefect's services (scheduler, triggers, event persister, ...) in a process of their own."""
    return [sys.executable, "-m", "prefect", "server", "services", "start"]


def worker_command(pool: str) -> list[str]:
    """A Prefect process worker of `pool`."""
    return [sys.executable, "-m", "prefect", "worker", "start", "--type", "process", "--pool", pool]


def api_command(
    *, host: str, port: int, workers: int | None = None, graceful_shutdown: int | None = None
) -> list[str]:
    """The control plane's API under uvicorn: in `workers` processes (None: uvicorn's default,
    WEB_CONCURRENCY or one), with `graceful_shutdown` seconds for the requests in flight on
    SIGTERM (None: as long as they take)."""
    command = [sys.executable, "-m", "uvicorn", "control_plane.api.app:app"]
    command += ["--host", host, "--port", str(port)]
    if workers is not None:
        command += ["--workers", str(workers)]
    if graceful_shutdown is not None:
        command += ["--timeout-graceful-shutdown", str(graceful_shutdown)]
    return command


def redis_command(port: int) -> list[str]:
    """The Redis of Prefect's messaging (scaled out): on 127.0.0.1, nothing kept on disk, since
    Prefect keeps in it only what is in flight.

    Without its process title: to set one, Redis writes over the memory that
    /proc/<pid>/environ reads, and the supervisor would no longer find the stack's mark there,
    nor stop it."""
    command = ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", ""]
    return [*command, "--appendonly", "no", "--set-proc-title", "no"]


def _prefect_env(home: Path, extra_env: Mapping[str, str]) -> dict[str, str]:
    home.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **extra_env, "PREFECT_HOME": str(home)}
    env.pop("PREFECT_API_URL", None)
    return env


def prefect_server(
    home: Path, port: int, extra_env: Mapping[str, str], workers: int = 1
) -> Process:
    """Prefect's server on 127.0.0.1:`port`, at home in `home`, its log there."""
    command = prefect_server_command(host="127.0.0.1", port=port, workers=workers)
    return Process("Prefect server", command, _prefect_env(home, extra_env), home / "server.log")


def prefect_services(home: Path, extra_env: Mapping[str, str]) -> Process:
    """Prefect's services, beside a `prefect_server` of several workers on the same `home`."""
    env = _prefect_env(home, extra_env)
    return Process("Prefect services", prefect_services_command(), env, home / "services.log")


def api_server(env: Mapping[str, str], port: int, log: Path, workers: int = 1) -> Process:
    """The control plane's API on 127.0.0.1:`port`, with `env` over ours."""
    command = api_command(host="127.0.0.1", port=port, workers=workers)
    return Process("API", command, {**os.environ, **env}, log)


def worker(env: Mapping[str, str], pool: str, log: Path) -> Process:
    """A process worker of `pool`, with `env` over ours."""
    return Process(f"worker {pool}", worker_command(pool), {**os.environ, **env}, log)


__all__ = [
    "STOP_GRACE_SECONDS",
    "Process",
    "StartFailed",
    "answers",
    "api_command",
    "api_server",
    "as_user",
    "exit_status",
    "free_port",
    "listens_on",
    "port_taken",
    "prefect_server",
    "prefect_server_command",
    "prefect_services",
    "prefect_services_command",
    "redis_command",
    "running",
    "wait_for",
    "worker",
    "worker_command",
]
