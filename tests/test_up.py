"""`control-plane up` as a supervisor, run for real: signals stop every process it started (and
only a process that had to be killed makes it exit non-zero), a SIGKILLed `up` leaves nothing
behind, a taken port stops it before it starts anything, and what dies is restarted.

Where the scenario allows, `up` runs on the session's Prefect server (and starts only its
workers and the API); a Prefect server of its own costs half a minute to start.
"""

import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import tomllib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from uuid import UUID

import httpx
import psycopg
import pytest
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.objects import FlowRun, WorkerStatus
from prefect.settings import PREFECT_API_URL, temporary_settings

from bench._seed import created, make_catalog, unique
from control_plane import deployments, postgres
from control_plane.postgres import ClusterError
from control_plane.processes import free_port, wait_for
from control_plane.settings import Settings
from control_plane.supervisor import STACK_MARK
from tests.helpers import trigger_and_wait

CONTROL_PLANE = str(Path(sys.executable).parent / "control-plane")
PAUSED_CREATE = "create-connector:before-commit"
PAUSED_UPDATE = "update-connector:before-commit"


@dataclass
class Up:
    """A `control-plane up` of the test's own, in a process group of its own."""

    popen: subprocess.Popen[bytes]
    data_dir: Path
    api_url: str
    env: dict[str, str]
    started: dict = field(default_factory=dict)  # up.json once the stack is up

    @property
    def prefect_url(self) -> str:
        return self.env.get("PREFECT_API_URL") or (
            f"http://127.0.0.1:{self.env['CONTROL_PLANE_PREFECT_PORT']}/api"
        )

    def api(self) -> httpx.Client:
        return httpx.Client(base_url=f"{self.api_url}/api/v1", timeout=60)

    def create_connector(self) -> dict:
        with self.api() as api:
            catalog = make_catalog(api, self.data_dir / "files")
            return created(api.post("/connectors", json=catalog.connector()))

    def sync_a_new_connector(self) -> FlowRun:
        """Create a connector and run it once; its sync run, ended."""
        connector = self.create_connector()
        with self.api() as api, _prefect(self) as prefect:
            return trigger_and_wait(api, prefect, connector["id"])

    @property
    def output(self) -> str:
        return (self.data_dir / "up.log").read_text(errors="replace")

    def state(self) -> dict:
        return json.loads((self.data_dir / "up.json").read_text())

    def wait_until_up(self, timeout: float) -> None:
        def is_up() -> bool:
            if self.popen.poll() is not None:
                raise AssertionError(f"up exited with {self.popen.returncode}:\n{self.output}")
            return "Connector control plane is up." in self.output

        wait_for(is_up, timeout=timeout, what="control-plane up", interval=0.5)
        self.started = self.state()

    def wait_for_output(self, text: str, timeout: float = 30) -> None:
        wait_for(lambda: text in self.output, timeout=timeout, what=f"{text!r} in up's output")

    def send(self, signum: int, *, to_group: bool) -> None:
        if to_group:
            os.killpg(self.popen.pid, signum)  # as `kill -TERM -- -<pgid>` does
        else:
            self.popen.send_signal(signum)

    def wait_exit(self, timeout: float) -> int:
        return self.popen.wait(timeout=timeout)

    def left(self) -> list[str]:
        """The processes of the stack still running, read from the process table: marked, or
        started as `up` said (a process may hide its mark, as Redis's title did)."""
        pids = [self.started["pid"], self.started["watchdog"], *self.started["processes"].values()]
        return _running(self.started["stack"], pids)

    def assert_nothing_left(self, timeout: float = 15) -> None:
        wait_for(lambda: not self.left(), timeout=timeout, what="the stack's processes to go")


def _running(stack: str, pids: list[int]) -> list[str]:
    """Live processes whose environment carries the stack's mark, and those of `pids` alive."""
    mark = f"{STACK_MARK}={stack}".encode()
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_bytes()
            marked = mark in Path(entry.path, "environ").read_bytes().split(b"\0")
            command = Path(entry.path, "cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        zombie = stat[stat.rindex(b")") + 2 :].split()[0] == b"Z"
        if not zombie and (marked or int(entry.name) in pids):
            found.append(f"{entry.name} {command.decode(errors='replace')}")
    return found


def _environment(data_dir: Path, **settings: str) -> dict[str, str]:
    """The test's environment without its own control-plane and Prefect API settings, with a
    Prefect home of its own beside `data_dir`."""
    home = data_dir.parent / "prefect-home"
    home.mkdir(parents=True, exist_ok=True)
    inherited = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("CONTROL_PLANE_") and name != "PREFECT_API_URL"
    }
    return {
        **inherited,
        "PREFECT_HOME": str(home),
        "CONTROL_PLANE_DATA_DIR": str(data_dir),
        "CONTROL_PLANE_API_PORT": str(free_port()),
        "CONTROL_PLANE_PREFECT_POSTGRES_PORT": str(free_port()),
        "CONTROL_PLANE_WORK_POOL": unique("up"),
        # Others' tests share the session's Prefect server: no scheduled reconcile on it.
        "CONTROL_PLANE_RECONCILE_INTERVAL_SECONDS": "0",
        "CONTROL_PLANE_FULL_RECONCILE_INTERVAL_SECONDS": "0",
        **settings,
    }


def _start(data_dir: Path, env: dict[str, str], command: str = CONTROL_PLANE, *args: str) -> Up:
    data_dir.mkdir(parents=True, exist_ok=True)
    with (data_dir / "up.log").open("ab") as log:
        popen = subprocess.Popen(
            [command, "up", *args],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=data_dir,
        )
    api_url = f"http://127.0.0.1:{env['CONTROL_PLANE_API_PORT']}"
    return Up(popen, data_dir, api_url, env)


def _kill(up: Up) -> None:
    """Whatever a test left: SIGKILL `up` (its watchdog stops the rest), then what remains."""
    if up.popen.poll() is None:
        up.popen.kill()
        up.popen.wait()
    if not up.started:
        return
    try:
        up.assert_nothing_left(timeout=30)
    except TimeoutError:
        for line in up.left():
            os.kill(int(line.split()[0]), signal.SIGKILL)


@pytest.fixture
def start_up() -> Iterator[Callable[..., Up]]:
    """Starts `control-plane up` with the given environment; kills what is left afterwards."""
    started: list[Up] = []

    def start(env: dict[str, str]) -> Up:
        up = _start(Path(env["CONTROL_PLANE_DATA_DIR"]), env)
        started.append(up)
        return up

    yield start
    for up in started:
        _kill(up)


@contextmanager
def _requests_in_flight(up: Up, count: int) -> Iterator[list[httpx.Response | httpx.HTTPError]]:
    """`count` creates sent at once, in flight in the block; after it, each one's answer."""
    answers: list[httpx.Response | httpx.HTTPError] = []
    with up.api() as api:
        catalog = make_catalog(api, up.data_dir / "files")

        def create() -> None:
            try:
                answers.append(api.post("/connectors", json=catalog.connector()))
            except httpx.HTTPError as error:
                answers.append(error)

        threads = [threading.Thread(target=create) for _ in range(count)]
        for thread in threads:
            thread.start()
        try:
            yield answers
        finally:
            for thread in threads:
                thread.join(timeout=60)


def _assert_json(answers: list) -> None:
    for answer in answers:
        if isinstance(answer, httpx.Response):
            assert answer.headers["content-type"] == "application/json", answer.text
            assert "detail" in answer.json() or answer.status_code == 201, answer.text


class TestSignals:
    @pytest.mark.parametrize(
        ("signals", "to_group"),
        [
            ([signal.SIGTERM], False),
            ([signal.SIGTERM], True),
            ([signal.SIGINT, signal.SIGINT], True),  # Ctrl-C twice in the terminal
        ],
        ids=["sigterm", "sigterm-to-group", "sigint-twice-to-group"],
    )
    def test_everything_stops_and_up_exits_0(
        self, signals, to_group, start_up, prefect_api_url, tmp_path
    ):
        up = start_up(_environment(tmp_path / "data", PREFECT_API_URL=prefect_api_url))
        up.wait_until_up(timeout=90)
        assert set(up.started["processes"]) == {
            "worker control-plane",
            f"worker {up.env['CONTROL_PLANE_WORK_POOL']}",
            "API",
        }
        with _requests_in_flight(up, 3) as answers:
            first, *again = signals
            up.send(first, to_group=to_group)
            up.wait_for_output(f"{first.name} received: stopping")
            for signum in again:
                up.send(signum, to_group=to_group)
            status = up.wait_exit(timeout=60)

        _assert_json(answers)
        for signum in again:
            assert f"{signum.name} received while stopping" in up.output
        assert status == 0, up.output
        assert "control-plane up: killed" not in up.output
        up.assert_nothing_left(timeout=5)
        assert not (up.data_dir / "up.json").exists()

    def test_a_second_signal_does_not_cut_the_stop_and_what_hangs_is_killed(
        self, start_up, prefect_api_url, tmp_path
    ):
        # The create stops before its commit, so it is in flight when the stop begins: uvicorn
        # cuts it after half the grace period. A stopped (SIGSTOP) worker hangs as a process
        # that ignores SIGTERM would, until it is killed.
        env = _environment(
            tmp_path / "data",
            PREFECT_API_URL=prefect_api_url,
            CONTROL_PLANE_PAUSE_POINTS=json.dumps([PAUSED_CREATE]),
            CONTROL_PLANE_STOP_GRACE_SECONDS="6",
        )
        up = start_up(env)
        up.wait_until_up(timeout=90)
        hung = f"worker {env['CONTROL_PLANE_WORK_POOL']}"
        with _requests_in_flight(up, 1) as answers:
            wait_for(
                lambda: (up.data_dir / f"paused-at-{PAUSED_CREATE}").exists(),
                timeout=30,
                what="the create to pause",
            )
            os.kill(up.started["processes"][hung], signal.SIGSTOP)

            up.send(signal.SIGHUP, to_group=False)
            up.wait_for_output("SIGHUP received: stopping")
            up.send(signal.SIGTERM, to_group=False)
            status = up.wait_exit(timeout=60)

        [answer] = answers
        assert isinstance(answer, httpx.Response), answer
        assert (answer.status_code, answer.headers["content-type"]) == (503, "application/json")
        assert "shutting down" in answer.json()["detail"]
        assert "SIGTERM received while stopping: what outlives its grace is killed" in up.output
        pid = up.started["processes"][hung]
        killed = [line for line in up.output.splitlines() if "control-plane up: killed" in line]
        assert [line.partition("up: ")[2] for line in killed] == [
            f"killed {hung} (pid {pid}): still running 6 s after SIGTERM"
        ]
        assert status == 1
        up.assert_nothing_left(timeout=5)


@contextmanager
def _listening() -> Iterator[int]:
    """A port this test process listens on, as someone else's server would."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        yield server.getsockname()[1]


class TestTakenPort:
    @pytest.mark.parametrize(
        ("variable", "owner"),
        [
            ("CONTROL_PLANE_API_PORT", "the API"),
            ("CONTROL_PLANE_PREFECT_PORT", "Prefect"),
            ("CONTROL_PLANE_PREFECT_POSTGRES_PORT", "Prefect's PostgreSQL"),
        ],
    )
    def test_up_names_the_process_on_it_and_starts_nothing(self, variable, owner, tmp_path):
        data_dir = tmp_path / "data"
        with _listening() as port:
            env = _environment(data_dir, CONTROL_PLANE_PREFECT_PORT=str(free_port()))
            env[variable] = str(port)
            done = subprocess.run(
                [CONTROL_PLANE, "up"], env=env, capture_output=True, text=True, timeout=60
            )
        assert done.returncode == 1, done.stderr
        message = done.stderr.strip()
        assert message.startswith(f"control-plane up: port {port} of {owner} on 127.0.0.1 "), (
            message
        )
        assert f"is taken by pid {os.getpid()} (" in message
        assert f"set {variable} to a free port. Nothing was started." in message
        assert not data_dir.exists()


@contextmanager
def _prefect(up: Up) -> Iterator[SyncPrefectClient]:
    with temporary_settings({PREFECT_API_URL: up.prefect_url}):
        with get_client(sync_client=True) as client:
            yield client


@pytest.fixture(scope="module")
def open_folder() -> Iterator[Path]:
    """A folder other users may enter, for the data dirs of `up`s that run their own Prefect:
    as root, `up` runs its PostgreSQL as nobody, who cannot enter pytest's folders."""
    folder = Path(tempfile.mkdtemp(prefix="control-plane-up-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def own_stack(open_folder: Path) -> Iterator[Up]:
    """`up` with a Prefect server of its own, for the tests that kill processes of it."""
    data_dir = open_folder / "own-stack" / "data"
    env = _environment(
        data_dir,
        CONTROL_PLANE_PREFECT_PORT=str(free_port()),
        # A worker tells Prefect it is there every 30 s by default.
        PREFECT_WORKER_HEARTBEAT_SECONDS="5",
        CONTROL_PLANE_PAUSE_POINTS=json.dumps([PAUSED_UPDATE]),
    )
    up = _start(data_dir, env)
    try:
        up.wait_until_up(timeout=150)
        yield up
    finally:
        _kill(up)


def _workers_online(prefect: SyncPrefectClient, pool: str, since: datetime) -> list[str]:
    return [
        worker.name
        for worker in prefect.read_workers_for_work_pool(pool)
        if worker.status == WorkerStatus.ONLINE
        and worker.last_heartbeat_time is not None
        and worker.last_heartbeat_time > since
    ]


class TestRestarts:
    def test_a_killed_worker_is_restarted(self, own_stack: Up):
        up = own_stack
        pool = up.env["CONTROL_PLANE_WORK_POOL"]
        name = f"worker {pool}"
        killed = up.state()["processes"][name]
        killed_at = datetime.now(UTC)

        os.killpg(killed, signal.SIGKILL)

        up.wait_for_output(
            f"{name} (pid {killed}) exited with signal SIGKILL; restarting it in 1 s"
        )
        wait_for(lambda: up.state()["processes"][name] != killed, timeout=30, what="a new worker")
        with _prefect(up) as prefect:
            wait_for(
                lambda: _workers_online(prefect, pool, killed_at),
                timeout=60,
                what=f"a worker of {pool} online again",
            )

    def test_a_killed_prefect_server_is_restarted_and_the_stack_heals(self, own_stack: Up):
        up = own_stack
        connector = up.create_connector()
        with _prefect(up) as prefect:
            # Drift, as an outage may leave it: Prefect lost the connector's deployment.
            prefect.delete_deployment(UUID(connector["prefectDeploymentId"]))
        server = up.state()["processes"]["Prefect server"]
        killed_at = datetime.now(UTC)

        os.killpg(server, signal.SIGKILL)

        up.wait_for_output(
            f"Prefect server (pid {server}) exited with signal SIGKILL; restarting it in 1 s"
        )
        outage = httpx.get(f"{up.api_url}/readyz", timeout=30)
        assert outage.status_code == 503
        assert "cannot be reached" in outage.json()["detail"]["prefect"], outage.text
        assert httpx.get(f"{up.api_url}/livez").json() == {"status": "ok"}
        wait_for(
            lambda: httpx.get(f"{up.api_url}/readyz", timeout=30).status_code == 200,
            timeout=120,
            what="/readyz to answer 200 again",
            interval=1,
        )
        up.wait_for_output("Prefect server answers again")
        pool = up.env["CONTROL_PLANE_WORK_POOL"]
        with _prefect(up) as prefect:
            wait_for(
                lambda: _workers_online(prefect, pool, killed_at),
                timeout=60,
                what=f"a worker of {pool} online again",
            )
            wait_for(
                lambda: re.search(r"reconcile \(pid \d+\) exited with code 0", up.output),
                timeout=120,
                what="the reconcile after the restart",
            )
            name = deployments.deployment_name(connector["id"])
            deployment = prefect.read_deployment_by_name(f"sync-connector/{name}")
        with up.api() as api:
            row = api.get(f"/connectors/{connector['id']}").json()
        assert row["prefectDeploymentId"] == str(deployment.id)

    def test_a_cluster_nobody_could_reach_is_refused_and_nothing_is_opened(self, open_folder: Path):
        closed = open_folder / "closed"
        closed.mkdir(mode=0o700)
        settings = Settings(data_dir=closed / "data")
        if os.geteuid() == 0:
            with pytest.raises(ClusterError, match=f"other users may not enter {closed}"):
                postgres.cluster(settings)
            assert closed.stat().st_mode & 0o777 == 0o700
        else:  # PostgreSQL runs as this user, who may enter its own folders
            assert (postgres.cluster(settings).data / "PG_VERSION").exists()

    def test_prefect_runs_on_a_postgresql_of_its_own_which_is_restarted(self, own_stack: Up):
        up = own_stack
        cluster = up.data_dir / "postgres"
        assert (cluster / "PG_VERSION").exists()
        if os.geteuid() == 0:
            assert cluster.stat().st_uid == pwd.getpwnam("nobody").pw_uid
        port = up.env["CONTROL_PLANE_PREFECT_POSTGRES_PORT"]
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            psycopg.connect(f"postgresql://postgres:guess@127.0.0.1:{port}/postgres").close()
        server = up.state()["processes"]["PostgreSQL"]

        os.killpg(server, signal.SIGKILL)

        up.wait_for_output(f"PostgreSQL (pid {server}) exited with signal SIGKILL; restarting")
        wait_for(
            lambda: (
                httpx.get(f"{up.api_url}/readyz", timeout=30).status_code == 200
                and up.state()["processes"]["PostgreSQL"] != server
            ),
            timeout=60,
            what="/readyz to answer 200 from a new PostgreSQL",
            interval=1,
        )
        connector = up.create_connector()
        with _prefect(up) as prefect:
            name = deployments.deployment_name(connector["id"])
            deployment = prefect.read_deployment_by_name(f"sync-connector/{name}")
        assert str(deployment.id) == connector["prefectDeploymentId"]


class TestSigkill:
    def test_what_up_started_goes_when_up_is_sigkilled(self, own_stack: Up):
        up = own_stack
        connector = up.create_connector()
        with _prefect(up) as prefect:
            # A control flow run by the worker, from the Prefect UI, that stays half-way.
            update = prefect.read_deployment_by_name("update-connector/update-connector")
            changes = {"schedule": "0 3 * * *"}
            parameters = {"connector_id": connector["id"], "changes": changes}
            prefect.create_flow_run_from_deployment(update.id, parameters=parameters)
        wait_for(
            lambda: (up.data_dir / f"paused-at-{PAUSED_UPDATE}").exists(),
            timeout=90,
            what="a flow run of the worker to pause",
        )
        assert "Prefect server" in up.state()["processes"]
        assert [line for line in up.left() if "prefect.engine" in line], up.left()

        up.popen.kill()
        up.popen.wait()

        up.assert_nothing_left(timeout=20)
        up.wait_for_output(f"watchdog: pid {up.popen.pid} is gone; stopping what it left")


ROOT = Path(__file__).resolve().parent.parent

# A test of a session of its own: it starts a process, says its pid, and waits to be killed.
_SLEEPS = """
import os, subprocess, sys, time
from pathlib import Path

def test_sleeps():
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    Path(os.environ["SLEEPER_PID_FILE"]).write_text(str(sleeper.pid))
    time.sleep(600)
"""


class TestKilledTestSession:
    def test_what_a_sigkilled_session_started_goes(self, tmp_path: Path):
        """This suite's sessions watch their processes as `up` does (tests/conftest.py)."""
        (tmp_path / "test_sleeps.py").write_text(_SLEEPS)
        pid_file = tmp_path / "sleeper.pid"
        session = subprocess.Popen(
            [sys.executable, "-m", "pytest", "-p", "tests.conftest", "-q", "-p", "no:xdist"]
            + [str(tmp_path / "test_sleeps.py")],
            cwd=ROOT,
            env={**os.environ, "SLEEPER_PID_FILE": str(pid_file)},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            wait_for(
                lambda: pid_file.exists() and pid_file.read_text() != "",
                timeout=60,
                what="the session's test to start a process",
            )
            sleeper = int(pid_file.read_text())
            environ = Path(f"/proc/{sleeper}/environ").read_bytes().split(b"\0")
        finally:
            session.kill()
        # The watchdog holds the session's stderr open: it ends once the watchdog is done.
        stderr = session.communicate(timeout=60)[1].decode()

        mark = f"{STACK_MARK}=".encode()
        [stack] = [v[len(mark) :].decode() for v in environ if v.startswith(mark)]
        assert stack != os.environ[STACK_MARK]  # the killed session's mark, not this one's
        assert not _running(stack, [sleeper])
        assert f"watchdog: pid {session.pid} is gone; stopping what it left, 1 process" in stderr


class TestScaleProfile:
    def test_prefect_and_the_api_run_in_several_processes_on_redis_and_a_sync_completes(
        self, open_folder: Path
    ):
        data_dir = open_folder / "scale" / "data"
        env = _environment(
            data_dir,
            CONTROL_PLANE_PREFECT_PORT=str(free_port()),
            CONTROL_PLANE_REDIS_PORT=str(free_port()),
        )
        up = _start(data_dir, env, CONTROL_PLANE, "--profile", "scale")
        try:
            up.wait_until_up(timeout=180)
            assert {"Redis", "Prefect server", "Prefect services", "API"} <= set(
                up.started["processes"]
            )
            # uvicorn's parent and its two workers, for Prefect's API and for ours.
            for name in ("Prefect server", "API"):
                children = subprocess.run(
                    ["pgrep", "-P", str(up.started["processes"][name])],
                    capture_output=True,
                    text=True,
                ).stdout.split()
                assert len(children) >= 2, (name, children)
            run = up.sync_a_new_connector()
            assert run.state.is_completed(), run.state
            up.send(signal.SIGTERM, to_group=False)
            assert up.wait_exit(timeout=90) == 0, up.output
            up.assert_nothing_left()
        finally:
            _kill(up)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The `control-plane` command of the built wheel, installed into a virtualenv of its own.

    The wheel is built from a copy of the package's files, so that nothing lands in the
    checkout. The virtualenv finds the test's own dependencies through a `.pth` line (no
    download), but none of the checkout: that line does not run the editable install's hook.
    """
    source = tmp_path_factory.mktemp("source") / "package"
    kept = ("control_plane", "flows", "models", "pyproject.toml", "README.md", "prefect.yaml")
    shutil.copytree(
        ROOT,
        source,
        ignore=lambda folder, names: (
            [] if Path(folder) != ROOT else [n for n in names if n not in kept]
        ),
    )
    wheels = tmp_path_factory.mktemp("wheels")
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", wheels, source], check=True
    )
    [wheel] = wheels.glob("*.whl")
    venv = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    (Path(site) / "test-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([*pip, "--python", python, "install", "--no-deps", wheel], check=True)
    return venv / "bin" / "control-plane"


class TestInstalledWheel:
    def test_the_wheel_alone_migrates_runs_the_stack_deploys_and_syncs(
        self, installed: Path, tmp_path: Path, open_folder: Path
    ):
        version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
        done = subprocess.run([installed, "--version"], capture_output=True, text=True, check=True)
        assert done.stdout.strip() == version
        python = installed.parent / "python"
        where = [python, "-c", "import control_plane; print(control_plane.__file__)"]
        package = Path(
            subprocess.run(
                where, cwd=tmp_path, capture_output=True, text=True, check=True
            ).stdout.strip()
        ).parent
        assert package.is_relative_to(installed.parent.parent), package
        assert (package / "prefect.yaml").is_file()

        data_dir = open_folder / "wheel" / "data"
        env = _environment(data_dir, CONTROL_PLANE_PREFECT_PORT=str(free_port()))
        migrated = subprocess.run(
            [installed, "migrate"], env=env, cwd=tmp_path, capture_output=True, text=True
        )
        assert migrated.returncode == 0, migrated.stderr
        assert (data_dir / "control-plane.db").is_file()

        up = _start(data_dir, env, str(installed))
        try:
            up.wait_until_up(timeout=150)
            deployed = subprocess.run(
                [installed, "deploy"],
                env={**env, "PREFECT_API_URL": up.prefect_url},
                cwd=tmp_path,
                capture_output=True,
                text=True,
            )
            assert deployed.returncode == 0, deployed.stderr
            assert "deployed create-connector/create-connector" in deployed.stdout
            run = up.sync_a_new_connector()
            assert run.state.is_completed(), run.state
        finally:
            _kill(up)
