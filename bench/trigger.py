"""Trigger to running: from `POST /trigger` to the sync run's Running state (and to its end),
with a process worker polling as `make up` starts it (CONTROL_PLANE_WORKER_POLL_SECONDS).

    .venv/bin/python -m bench.trigger [--rounds 10]

Also reads the CPU Prefect's server uses at rest while the worker polls, what the short poll
costs. Prints a table and writes bench/results/trigger.json.
"""

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from uuid import UUID

import httpx
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import StateType

from bench._seed import make_catalog
from bench._stack import cpu_seconds, local_stack, percentile, process_tree, write_results
from control_plane.settings import get_settings


def _time_runs(api: httpx.Client, files: Path, rounds: int) -> dict[str, list[float]]:
    """Seconds from each trigger to its run's Running and Completed states, by the states' own
    timestamps (one clock on this machine), so that polling for the end does not steal the CPU
    the starting run needs."""
    catalog = make_catalog(api, files)
    connector = api.post("/connectors", json=catalog.connector(schedule=None)).json()
    timings: dict[str, list[float]] = {"running": [], "completed": []}
    with get_client(sync_client=True) as prefect:
        for _ in range(rounds):
            start = time.time()
            answer = api.post(f"/connectors/{connector['id']}/trigger").json()
            run_id = UUID(answer["flowRunId"])
            while not (state := prefect.read_flow_run(run_id).state).is_final():
                time.sleep(0.5)
            assert state.is_completed(), state
            states = prefect.read_flow_run_states(run_id)
            entered = {state.type: state.timestamp.timestamp() for state in states}
            timings["running"].append(entered[StateType.RUNNING] - start)
            timings["completed"].append(entered[StateType.COMPLETED] - start)
    return timings


def _server_at_rest(pid: int, seconds: float = 30) -> float:
    """Share of a core Prefect's server process tree uses over `seconds` with nothing to do."""
    tree = process_tree(pid)
    before = cpu_seconds(tree)
    time.sleep(seconds)
    return (cpu_seconds(tree) - before) / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, local_stack(Path(tmp), with_worker=True) as stack:
        at_rest = _server_at_rest(stack.prefect_process.popen.pid)
        timings = _time_runs(stack.api, stack.files, args.rounds)
    rows = {
        until: {
            "p50_s": round(statistics.median(values), 2),
            "p95_s": round(percentile(values, 0.95), 2),
            "n": len(values),
        }
        for until, values in timings.items()
    }
    poll = get_settings().worker_poll_seconds
    print(f"trigger -> state (worker polls every {poll} s)")
    print(f"{'until':<12}{'p50 s':>8}{'p95 s':>8}{'n':>5}")
    for until, row in rows.items():
        print(f"{until:<12}{row['p50_s']:>8}{row['p95_s']:>8}{row['n']:>5}")
    print(f"Prefect's server at rest with the worker polling: {at_rest:.1%} of a core")
    write_results(
        "trigger",
        worker_poll_seconds=poll,
        until=rows,
        prefect_server_at_rest_cores=round(at_rest, 3),
    )


if __name__ == "__main__":
    main()
