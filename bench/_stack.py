"""What the benchmarks share: a local stack on loopback, percentiles, and the results file."""

import asyncio
import json
import os
import platform
import uuid
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from prefect.settings import PREFECT_API_URL, temporary_settings

from bench._seed import postgres_database
from control_plane import bootstrap
from control_plane.cli import migrate_prefect, prefect_server_env, redis_messaging_env
from control_plane.db import migrate
from control_plane.postgres import cluster as prefect_cluster
from control_plane.processes import (
    Process,
    api_server,
    free_port,
    listens_on,
    prefect_server,
    prefect_services,
    redis_command,
    running,
    worker,
)
from control_plane.settings import Settings

RESULTS = Path(__file__).parent / "results"
WORK_POOL = "bench"


@dataclass
class LocalStack:
    api: httpx.Client  # of the API's /api/v1
    api_process: Process
    prefect_process: Process
    prefect_url: str
    database_url: str  # the control plane's
    env: dict[str, str]  # of the API and worker processes
    prefect_postgres: Process | None  # Prefect's PostgreSQL, when it runs one as `up` does
    prefect_services: Process | None = None  # its services' own process, when scaled out

    @property
    def files(self) -> Path:
        """The file root: each project's connectors reach `<files>/<project id>/` only."""
        return Path(self.env["CONTROL_PLANE_DATA_DIR"]) / "files"


@contextmanager
def local_stack(
    home: Path,
    *,
    with_worker: bool = False,
    with_control_flows: bool = False,
    postgres: bool = False,
    prefect_env: Mapping[str, str] | None = None,
    scaled: bool = False,
) -> Iterator[LocalStack]:
    """Prefect (`make up`'s settings), the API and optionally a worker, on free ports; with
    `with_control_flows`, prefect.yaml's control deployments and automations too, with a worker.

    As under `make up`, the control plane's database is SQLite under `home` and Prefect's a
    PostgreSQL of its own (`control_plane.postgres`); with `postgres`, both are fresh databases
    on the machine's PostgreSQL (Prefect's through asyncpg, as its docs advise for load).
    `home` is the processes' data dir: their key file and their file root (`files`) are there.
    """
    settings = Settings()
    port, api_port = free_port(), free_port()
    prefect_url = f"http://127.0.0.1:{port}/api"
    api_url = f"http://127.0.0.1:{api_port}"
    with ExitStack() as stack:
        prefect_postgres = None
        if postgres:
            suffix = uuid.uuid4().hex[:12]
            database_url = stack.enter_context(postgres_database(f"bench_cp_{suffix}"))
            prefect_database = stack.enter_context(
                postgres_database(f"bench_prefect_{suffix}", "postgresql+asyncpg")
            )
            settings.prefect_database_url = prefect_database
        else:
            database_url = f"sqlite:///{home / 'control-plane.db'}"
            # As `up` runs it: a PostgreSQL of its own for Prefect's server, whose user (nobody,
            # when this runs as root) must enter `home`, a temporary directory only we may.
            home.chmod(0o711)
            cluster = prefect_cluster(Settings(data_dir=home, prefect_postgres_port=free_port()))
            log = home / "postgres.log"
            prefect_postgres = Process("PostgreSQL", cluster.command, {}, log, cluster.user)
            stack.enter_context(running(prefect_postgres)).wait_until(cluster.ready, timeout=60)
            settings.prefect_database_url = cluster.url
        key_file = home / "secret.key"
        migrate(database_url, secret_key_file=key_file)
        env = {
            "PREFECT_API_URL": prefect_url,
            "PREFECT_HOME": str(home),
            "PREFECT_WORKER_QUERY_SECONDS": str(settings.worker_poll_seconds),
            "CONTROL_PLANE_DATABASE_URL": database_url,
            "CONTROL_PLANE_WORK_POOL": WORK_POOL,
            "CONTROL_PLANE_DATA_DIR": str(home),
            "CONTROL_PLANE_SECRET_KEY_FILE": str(key_file),
        }
        database = settings.prefect_database_url
        server_env = {**prefect_server_env(settings, home, database), **(prefect_env or {})}
        if scaled:
            redis_port = free_port()
            redis = Process("Redis", redis_command(redis_port), {}, home / "redis.log")
            stack.enter_context(running(redis)).wait_until(
                lambda: listens_on(redis_port), timeout=30
            )
            server_env |= redis_messaging_env(f"redis://127.0.0.1:{redis_port}/0")
            server_env |= migrate_prefect(
                {**os.environ, **server_env, "PREFECT_HOME": str(home / "prefect")}
            )
        server = prefect_server(home / "prefect", port, server_env, workers=2 if scaled else 1)
        prefect_process = stack.enter_context(running(server, f"{prefect_url}/health"))
        services = None
        if scaled:
            services = stack.enter_context(running(prefect_services(home / "prefect", server_env)))
        stack.enter_context(temporary_settings({PREFECT_API_URL: prefect_url}))
        asyncio.run(bootstrap.ensure_work_pool(WORK_POOL, command=bootstrap.LOCAL_ENGINE))
        if with_worker:
            stack.enter_context(running(worker(env, WORK_POOL, home / "worker.log")))
        if with_control_flows:
            asyncio.run(bootstrap.deploy_control_flows(settings=settings))
            for pool in {entry["work_pool"]["name"] for entry in bootstrap.control_deployments()}:
                stack.enter_context(running(worker(env, pool, home / f"{pool}-worker.log")))
        api_workers = 2 if scaled else 1
        api_process = stack.enter_context(
            running(api_server(env, api_port, home / "api.log", api_workers), f"{api_url}/health")
        )
        api = stack.enter_context(httpx.Client(base_url=f"{api_url}/api/v1", timeout=60))
        yield LocalStack(
            api,
            api_process,
            prefect_process,
            prefect_url,
            database_url,
            env,
            prefect_postgres,
            services,
        )


def process_tree(root: int) -> list[int]:
    """The process and its descendants, from /proc."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    tree = [root]
    for pid in tree:
        tree += [child for child, parent in parents.items() if parent == pid]
    return tree


def cpu_seconds(pids: list[int]) -> float:
    """CPU seconds the processes used so far, with those of their children that ended."""
    ticks = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += sum(map(int, fields[11:15]))
    return ticks / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def write_results(name: str, **figures: Any) -> None:
    RESULTS.mkdir(exist_ok=True)
    result = {
        "benchmark": name,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        **figures,
    }
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2))
