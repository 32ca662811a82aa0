"""How late alerts come: from a freshness deadline to `connector.stale`, and from a failed sync
run to its signed webhook delivery.

    .venv/bin/python -m bench.alerts [--connectors 5] [--failures 5]

Starts Prefect, the API, a worker and the control flows with their automations (as `make up`
does), and a webhook receiver in this process. `--connectors` connectors with a 10 s
`maxStaleness` are created at once and never run: each one's delay is its `connector.stale`
event's time minus its deadline (createdAt + 10 s), and the time its API answer first showed
`freshness: stale`. Then a connector whose runs fail, routed to a `signed-webhook` channel, is
triggered `--failures` times: each delay is from its run's Failed state to the receiver's
arrival (one clock: this machine). Prints a table and writes bench/results/alerts.json.
"""

import argparse
import secrets
import tempfile
import threading
import time
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from uuid import UUID

import httpx
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowFilter, FlowFilterName
from prefect.client.schemas.objects import StateType

from bench._seed import make_catalog, unique
from bench._stack import local_stack, percentile, write_results
from control_plane.notify import SignedWebhook
from control_plane.processes import wait_for

WINDOW = timedelta(seconds=10)


def _receiver() -> tuple[ThreadingHTTPServer, list[float]]:
    arrivals: list[float] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            arrivals.append(time.time())
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, arrivals


def _stale_delays(api: httpx.Client, prefect_url: str, files: Path, count: int) -> dict:
    catalog = make_catalog(api, files)
    window = f"PT{int(WINDOW.total_seconds())}S"
    connectors = [
        api.post("/connectors", json=catalog.connector(maxStaleness=window)).json()
        for _ in range(count)
    ]
    seen: dict[int, float] = {}

    def all_stale() -> bool:
        for connector in connectors:
            if connector["id"] not in seen:
                if api.get(f"/connectors/{connector['id']}").json()["freshness"] == "stale":
                    seen[connector["id"]] = time.time()
        return len(seen) == count

    wait_for(all_stale, timeout=120, what="every connector to go stale", interval=0.5)
    events, shown, fired, started = [], [], [], []
    with get_client(sync_client=True) as prefect:
        marks = {
            run.tags and next(t for t in run.tags if t.startswith("connector:")): run
            for run in prefect.read_flow_runs(
                flow_filter=FlowFilter(name=FlowFilterName(any_=["mark-connector-stale"]))
            )
        }
    for connector in connectors:
        deadline = datetime.fromisoformat(connector["createdAt"]) + WINDOW
        body = {
            "filter": {
                "event": {"name": ["connector.stale"]},
                "resource": {"id": [f"connector.{connector['id']}"]},
                "occurred": {"since": connector["createdAt"]},
            }
        }
        [event] = wait_for(
            lambda body=body: httpx.post(f"{prefect_url}/events/filter", json=body).json()[
                "events"
            ],
            timeout=30,
            what="the connector.stale event to be stored",
        )
        events.append((datetime.fromisoformat(event["occurred"]) - deadline).total_seconds())
        shown.append(seen[connector["id"]] - deadline.timestamp())
        mark = marks[f"connector:{connector['id']}"]
        fired.append((mark.created - deadline).total_seconds())
        started.append((mark.start_time - deadline).total_seconds())
    return {
        "deadline -> automation fired": fired,
        "deadline -> mark run started": started,
        "deadline -> connector.stale": events,
        "deadline -> API shows stale": shown,
    }


def _notify_delays(api: httpx.Client, files: Path, failures: int) -> dict:
    server, arrivals = _receiver()
    name = unique("bench-hook")
    url = f"http://127.0.0.1:{server.server_port}/hook"
    SignedWebhook(url=url, secret=secrets.token_urlsafe(24)).save(name)
    catalog = make_catalog(api, files)
    routes = [{"events": ["run-failed"], "channel": f"signed-webhook/{name}"}]
    body = catalog.connector(
        sourceConfigOverride={"path": "missing.csv"},
        notifications=routes,
        maxConsecutiveFailures=0,
    )
    connector = api.post("/connectors", json=body).json()
    delays = []
    with get_client(sync_client=True) as prefect:
        for attempt in range(failures):
            run_id = UUID(api.post(f"/connectors/{connector['id']}/trigger").json()["flowRunId"])
            wait_for(
                lambda wanted=attempt + 1: len(arrivals) >= wanted,
                timeout=120,
                what="the delivery",
                interval=0.2,
            )
            states = prefect.read_flow_run_states(run_id)
            failed = next(s for s in states if s.type == StateType.FAILED)
            delays.append(arrivals[attempt] - failed.timestamp.timestamp())
    server.shutdown()
    return {"run Failed -> webhook delivered": delays}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connectors", type=int, default=5)
    parser.add_argument("--failures", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as home:
        with local_stack(Path(home), with_worker=True, with_control_flows=True) as stack:
            figures = {
                **_stale_delays(stack.api, stack.prefect_url, stack.files, args.connectors),
                **_notify_delays(stack.api, stack.files, args.failures),
            }
    print(f"{'delay (s)':<34} {'n':>3} {'p50':>7} {'max':>7}")
    rows = {}
    for what, values in figures.items():
        rows[what] = {
            "n": len(values),
            "p50": round(percentile(values, 0.5), 2),
            "max": round(max(values), 2),
            "values": [round(v, 2) for v in values],
        }
        print(f"{what:<34} {len(values):>3} {rows[what]['p50']:>7.2f} {rows[what]['max']:>7.2f}")
    write_results("alerts", delays=rows)


if __name__ == "__main__":
    main()
