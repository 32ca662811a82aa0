"""Latency of each connector action through HTTP, against a Prefect server started here.

    .venv/bin/python -m bench.actions [--rounds 30]

Starts a Prefect server (SQLite) and the API (uvicorn, loopback) on free ports, with a fresh
SQLite database, then times each action `rounds` times. Prints a table and writes
bench/results/actions.json.
"""

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from bench._stack import local_stack, percentile, write_results
from tests.helpers import make_catalog, unique


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, local_stack(Path(tmp)) as stack:
        timings = _measure(stack.api, Path(tmp), args.rounds)
    rows = {
        action: {
            "p50_ms": round(statistics.median(values) * 1000, 1),
            "p95_ms": round(percentile(values, 0.95) * 1000, 1),
            "n": len(values),
        }
        for action, values in timings.items()
    }
    print(f"{'action':<12}{'p50 ms':>10}{'p95 ms':>10}{'n':>6}")
    for action, row in rows.items():
        print(f"{action:<12}{row['p50_ms']:>10}{row['p95_ms']:>10}{row['n']:>6}")
    write_results(
        "actions", prefect_database="sqlite", control_plane_database="sqlite", actions=rows
    )


if __name__ == "__main__":
    main()
