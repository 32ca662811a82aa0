"""Kill to status: from a SIGKILL of a running sync run's process to its connector showing the
crash (`lastRunState: CRASHED`, counted), on a stack with the control deployments and
automations, with workers polling as `make up` starts them.

    .venv/bin/python -m bench.crash [--rounds 5]

The path measured: the worker reports the run Crashed, Prefect's automation runs
`record-sync-run-end` on the control pool's worker, which records it. Prints a table and
writes bench/results/crash.json.
"""

import argparse
import json
import os
import signal
import statistics
import tempfile
import time
from pathlib import Path
from uuid import UUID

from prefect.client.orchestration import get_client

from bench._seed import make_catalog
from bench._stack import LocalStack, local_stack, percentile, write_results

POINT = "sync-connector:during-write"


def _kill_and_wait(stack: LocalStack, marks: Path) -> float:
    """Seconds from the kill of a paused run to its connector showing the crash."""
    catalog = make_catalog(stack.api, stack.files)
    # Ten rows in batches of five: the run pauses with the first batch written.
    (catalog.folder / "in.csv").write_text("id\n" + "".join(f"{i}\n" for i in range(10)))
    connector = stack.api.post("/connectors", json=catalog.connector(schedule=None)).json()
    env = {
        "CONTROL_PLANE_PAUSE_POINTS": json.dumps([POINT]),
        "CONTROL_PLANE_DATA_DIR": str(marks),
        "CONTROL_PLANE_FILE_ROOTS": json.dumps([str(stack.files)]),
        "CONTROL_PLANE_BATCH_SIZE": "5",
    }
    with get_client(sync_client=True) as prefect:
        run = prefect.create_flow_run_from_deployment(
            UUID(connector["prefectDeploymentId"]), job_variables={"env": env}
        )
        while not (marks / f"paused-at-{POINT}").exists():
            time.sleep(0.1)
        pid = prefect.read_flow_run(run.id).infrastructure_pid
    killed = time.monotonic()
    os.kill(int(str(pid).rpartition(":")[2]), signal.SIGKILL)
    path = f"/connectors/{connector['id']}"
    while stack.api.get(path).json()["lastRunState"] != "CRASHED":
        time.sleep(0.1)
    return time.monotonic() - killed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory() as tmp,
        local_stack(Path(tmp), with_worker=True, with_control_flows=True) as stack,
    ):
        seconds = [_kill_and_wait(stack, Path(tmp) / f"marks-{n}") for n in range(args.rounds)]
    figures = {
        "rounds": args.rounds,
        "p50_seconds": statistics.median(seconds),
        "p95_seconds": percentile(seconds, 0.95),
        "max_seconds": max(seconds),
    }
    print(f"{'kill -9 of a running sync -> connector shows CRASHED':<56} {'seconds':>8}")
    for name in ("p50_seconds", "p95_seconds", "max_seconds"):
        print(f"  {name.removesuffix('_seconds'):<54} {figures[name]:>8.2f}")
    write_results("crash", **figures)


if __name__ == "__main__":
    main()
