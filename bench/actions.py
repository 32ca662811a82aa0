"""Latency of each connector action through HTTP, against a Prefect server started here.

    .venv/bin/python -m bench.actions [--rounds 30]

Starts a Prefect server (SQLite) and the API (uvicorn, loopback) on free ports, with a fresh
SQLite database, then times each action `rounds` times. Prints a table and writes
bench/results/actions.json.
"""

import argparse
import asyncio
import json
import os
import platform
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
from prefect.settings import PREFECT_API_URL, temporary_settings

from control_plane import deployments
from control_plane.cli import prefect_server_env
from control_plane.db import migrate
from control_plane.settings import Settings
from tests.helpers import make_catalog, unique
from tests.stack import api_server, free_port, prefect_server, running

RESULTS = Path(__file__).parent / "results"


def _measure(api: httpx.Client, directory: Path, rounds: int) -> dict[str, list[float]]:
    catalog = make_catalog(api, directory)
    timings: dict[str, list[float]] = {}

    def record(action: str, method: str, path: str, status: int, body=None) -> dict:
        start = time.perf_counter()
        response = api.request(method, path, json=body)
        timings.setdefault(action, []).append(time.perf_counter() - start)
        assert response.status_code == status, (action, response.text)
        return response.json() if response.content else {}

    for _ in range(rounds):
        body = catalog.connector(name=unique("bench"))
        path = f"/connectors/{record('create', 'POST', '/connectors', 201, body)['id']}"
        record("reschedule", "PATCH", path, 200, {"schedule": "0 */6 * * *"})
        record("trigger", "POST", f"{path}/trigger", 200)
        record("deactivate", "PATCH", path, 200, {"isActive": False})
        record("activate", "PATCH", path, 200, {"isActive": True})
        record("get", "GET", path, 200)
        record("delete", "DELETE", path, 204)
    return timings


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        port, api_port = free_port(), free_port()
        prefect_url = f"http://127.0.0.1:{port}/api"
        database_url = f"sqlite:///{home / 'control-plane.db'}"
        migrate(database_url)
        server = prefect_server(home / "prefect", port, prefect_server_env(Settings(), home))
        env = {
            "PREFECT_API_URL": prefect_url,
            "PREFECT_HOME": str(home),
            "CONTROL_PLANE_DATABASE_URL": database_url,
            "CONTROL_PLANE_WORK_POOL": "bench",
        }
        with running(server, f"{prefect_url}/health"):
            with temporary_settings({PREFECT_API_URL: prefect_url}):
                asyncio.run(deployments.ensure_work_pool("bench"))
            api_url = f"http://127.0.0.1:{api_port}"
            with (
                running(api_server(env, api_port, home / "api.log"), f"{api_url}/health"),
                httpx.Client(base_url=f"{api_url}/api/v1", timeout=60) as api,
            ):
                timings = _measure(api, home, args.rounds)
    rows = {
        action: {
            "p50_ms": round(statistics.median(values) * 1000, 1),
            "p95_ms": round(_percentile(values, 0.95) * 1000, 1),
            "n": len(values),
        }
        for action, values in timings.items()
    }
    print(f"{'action':<12}{'p50 ms':>10}{'p95 ms':>10}{'n':>6}")
    for action, row in rows.items():
        print(f"{action:<12}{row['p50_ms']:>10}{row['p95_ms']:>10}{row['n']:>6}")
    RESULTS.mkdir(exist_ok=True)
    result = {
        "benchmark": "actions",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "prefect_database": "sqlite",
        "control_plane_database": "sqlite",
        "actions": rows,
    }
    (RESULTS / "actions.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
