"""Bulk onboarding: connectors created through the API one at a time, then by concurrent clients.

    .venv/bin/python -m bench.throughput [--connectors 1000] [--clients 16] [--sequential 100]
        [--embedded]

Prefect's server and the control plane's database both run on fresh PostgreSQL databases, as
for a production load; with `--embedded`, as `make up` runs them (the control plane on SQLite,
Prefect on a PostgreSQL of its own), with Prefect's client retries off, so that every 503 of
Prefect's reaches the clients instead of a retry 2 s later. The sequential run measures creates
per second with one client; the concurrent run creates `--connectors` with `--clients` clients
at once. Prints a table and writes bench/results/throughput.json (throughput-embedded.json,
throughput-scaled.json).
"""

import argparse
import os
import re
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from bench._seed import Catalog, make_catalog
from bench._stack import (
    LocalStack,
    cpu_seconds,
    local_stack,
    percentile,
    process_tree,
    write_results,
)


def _postgres_pids() -> list[int]:
    postmaster = Path("/var/run/postgresql").glob("*.pid")
    return process_tree(int(next(postmaster).read_text().split()[0]))


# An access log line of Prefect's server: `"POST /api/flow_runs/ HTTP/1.1" 201`.
_ACCESS = re.compile(r'"(GET|POST|PATCH|PUT|DELETE) (/api/[^ ?"]*)[^"]*" \d{3}')
_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _prefect_calls(log: str) -> Counter[str]:
    """The requests Prefect's server answered, by method and path (ids as `{id}`)."""
    return Counter(f"{method} {_ID.sub('{id}', path)}" for method, path in _ACCESS.findall(log))


def _create_all(
    stack: LocalStack, api: httpx.Client, catalog: Catalog, names: list[str], clients: int
) -> dict:
    latencies: list[float] = []
    trees: dict[str, Callable[[], list[int]]] = {
        "api": lambda: process_tree(stack.api_process.popen.pid),
        "prefect": lambda: [
            pid
            for process in (stack.prefect_process, stack.prefect_services)
            if process is not None
            for pid in process_tree(process.popen.pid)  # type: ignore[union-attr]
        ],
        "postgres": _postgres_pids,
        "clients": lambda: [os.getpid()],
    }
    if stack.prefect_postgres is not None:
        postmaster = stack.prefect_postgres.popen.pid  # type: ignore[union-attr]
        trees["postgres"] = lambda: process_tree(postmaster)
    cpu_before = {name: cpu_seconds(tree()) for name, tree in trees.items()}
    access_log = stack.prefect_process.log
    logged_before = access_log.stat().st_size
    statuses: Counter[int] = Counter()

    def create(name: str) -> None:
        start = time.perf_counter()
        response = api.post("/connectors", json=catalog.connector(name=name))
        latencies.append(time.perf_counter() - start)
        statuses[response.status_code] += 1
        assert response.status_code in (201, 503), response.text

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=clients) as pool:
        list(pool.map(create, names))
    seconds = time.perf_counter() - start
    # The trees again: a connection opened meanwhile is a PostgreSQL process that was not there.
    cpu = {name: cpu_seconds(tree()) - cpu_before[name] for name, tree in trees.items()}
    cpu_per_create = sum(cpu.values()) / len(names)
    with access_log.open("rb") as log:
        log.seek(logged_before)
        calls = _prefect_calls(log.read().decode(errors="replace"))
    return {
        "prefect_calls_per_create": round(sum(calls.values()) / len(names), 2),
        "prefect_calls_by_endpoint_per_create": {
            endpoint: round(count / len(names), 2) for endpoint, count in calls.most_common()
        },
        "cpu_ms_per_create": {name: round(1000 * used / len(names)) for name, used in cpu.items()},
        # What the machine could do at best if every core did nothing else.
        "cpu_bound_per_second": round(len(os.sched_getaffinity(0)) / cpu_per_create, 1),
        "clients": clients,
        "creates": len(names),
        "seconds": round(seconds, 1),
        "per_second": round(len(names) / seconds, 1),
        "p50_ms": round(percentile(latencies, 0.5) * 1000),
        "p95_ms": round(percentile(latencies, 0.95) * 1000),
        "statuses": dict(statuses),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connectors", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--sequential", type=int, default=100)
    parser.add_argument("--embedded", action="store_true")
    parser.add_argument(
        "--scaled",
        action="store_true",
        help="Prefect's API in 2 processes, its services in another, on Redis; 2 API processes",
    )
    args = parser.parse_args()
    if args.embedded:
        os.environ["PREFECT_CLIENT_MAX_RETRIES"] = "0"  # the API's, which inherits it
    postgres = not args.embedded
    # Prefect's server logs each request it answers (uvicorn's access log), to count the calls.
    access = {"PREFECT_LOGGING_LOGGERS_UVICORN_LEVEL": "INFO"}
    with (
        tempfile.TemporaryDirectory() as tmp,
        local_stack(Path(tmp), postgres=postgres, prefect_env=access, scaled=args.scaled) as stack,
    ):
        limits = httpx.Limits(max_connections=args.clients)
        with httpx.Client(base_url=stack.api.base_url, timeout=120, limits=limits) as api:
            catalog = make_catalog(api, stack.files)
            runs = {
                "sequential": _create_all(
                    stack, api, catalog, [f"seq-{i}" for i in range(args.sequential)], 1
                ),
                "concurrent": _create_all(
                    stack, api, catalog, [f"bulk-{i}" for i in range(args.connectors)], args.clients
                ),
            }
    speedup = round(runs["concurrent"]["per_second"] / runs["sequential"]["per_second"], 1)
    print(f"{'run':<12}{'clients':>8}{'creates':>9}{'seconds':>9}{'per s':>8}{'p50 ms':>8}", end="")
    print(f"{'p95 ms':>8}  answers")
    for name, run in runs.items():
        print(
            f"{name:<12}{run['clients']:>8}{run['creates']:>9}{run['seconds']:>9}"
            f"{run['per_second']:>8}{run['p50_ms']:>8}{run['p95_ms']:>8}  {run['statuses']}"
        )
    print("CPU ms per create:", {name: run["cpu_ms_per_create"] for name, run in runs.items()})
    for name, run in runs.items():
        print(f"Prefect calls per create ({name}): {run['prefect_calls_per_create']}")
        for endpoint, count in run["prefect_calls_by_endpoint_per_create"].items():
            print(f"  {count:>6} {endpoint}")
    print(
        f"all {len(os.sched_getaffinity(0))} cores busy with nothing else would do at most",
        {name: run["cpu_bound_per_second"] for name, run in runs.items()},
        "creates/s",
    )
    print(f"speed-up with {args.clients} clients: {speedup}x (target >= 3x, 1,000 in < 60 s)")
    variant = "-embedded" if args.embedded else "-scaled" if args.scaled else ""
    write_results(
        f"throughput{variant}",
        prefect_database="postgresql (embedded)" if args.embedded else "postgresql",
        control_plane_database="sqlite" if args.embedded else "postgresql",
        prefect_client_retries=0 if args.embedded else None,
        target=">= 3x sequential, 1,000 creates in < 60 s",
        speedup=speedup,
        runs=runs,
    )


if __name__ == "__main__":
    main()
