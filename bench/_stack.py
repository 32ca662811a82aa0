"""What the benchmarks share: a local stack on loopback, percentiles, and the results file."""

import asyncio
import json
import os
import platform
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from prefect.settings import PREFECT_API_URL, temporary_settings

from control_plane import deployments
from control_plane.cli import prefect_server_env
from control_plane.db import migrate
from control_plane.settings import Settings
from tests.stack import api_server, free_port, prefect_server, running, worker

RESULTS = Path(__file__).parent / "results"
WORK_POOL = "bench"


@contextmanager
def local_stack(home: Path, *, with_worker: bool = False) -> Iterator[httpx.Client]:
    """Prefect (SQLite, `make up`'s settings), the API and optionally a worker, on free ports;
    yields an HTTP client of the API's /api/v1."""
    settings = Settings()
    port, api_port = free_port(), free_port()
    prefect_url = f"http://127.0.0.1:{port}/api"
    database_url = f"sqlite:///{home / 'control-plane.db'}"
    migrate(database_url)
    env = {
        "PREFECT_API_URL": prefect_url,
        "PREFECT_HOME": str(home),
        "PREFECT_WORKER_QUERY_SECONDS": str(settings.worker_poll_seconds),
        "CONTROL_PLANE_DATABASE_URL": database_url,
        "CONTROL_PLANE_WORK_POOL": WORK_POOL,
    }
    server = prefect_server(home / "prefect", port, prefect_server_env(settings, home))
    api_url = f"http://127.0.0.1:{api_port}"
    with ExitStack() as stack:
        stack.enter_context(running(server, f"{prefect_url}/health"))
        stack.enter_context(temporary_settings({PREFECT_API_URL: prefect_url}))
        asyncio.run(deployments.ensure_work_pool(WORK_POOL))
        if with_worker:
            stack.enter_context(running(worker(env, WORK_POOL, home / "worker.log")))
        stack.enter_context(
            running(api_server(env, api_port, home / "api.log"), f"{api_url}/health")
        )
        yield stack.enter_context(httpx.Client(base_url=f"{api_url}/api/v1", timeout=60))


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
