#!/usr/bin/env python3
"""Walk one connector through its whole lifecycle against the control plane's REST API.

1. create it with a schedule   2. reschedule it   3. trigger a run and wait for it
4. deactivate it               5. delete it

Configuration comes from the environment; see README.md beside this file. Exits 0 when every
step passed, 1 with a message on stderr otherwise.
"""

import contextlib
import email.utils
import json
import os
import random
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

RETRY_STATUSES = frozenset({502, 503, 504})
FINISHED_STATES = frozenset({"COMPLETED", "FAILED", "CRASHED", "CANCELLED"})
RUN_DEADLINE_SECONDS = 120
RUN_POLL_SECONDS = 2.0
BACKOFF_BASE_SECONDS = 0.5
BACKOFF_CAP_SECONDS = 10.0
# A server asking for a longer pause than this is better reported than waited for.
RETRY_AFTER_CAP_SECONDS = 60.0

SAMPLE_CSV = "id,name,email\n1,Ada Lovelace,ada@example.com\n2,Alan Turing,alan@example.com\n"


class ExampleError(Exception):
    """A failure that ends the program with exit code 1."""


class ApiError(ExampleError):
    """The API answered with a status the step did not expect."""

    def __init__(self, method: str, path: str, status: int, detail: str) -> None:
        if status in (401, 403):
            hint = " (check AUTH_TOKEN: it is missing, expired or lacks the rights for this)"
        else:
            hint = ""
        super().__init__(f"{method} {path} answered {status}{hint}: {detail}")


@dataclass(frozen=True)
class Config:
    base_url: str
    auth_token: str | None
    project_id: int | None
    defined_source_id: int | None
    defined_destination_id: int | None
    max_retries: int
    request_timeout: float
    files_dir: Path

    @classmethod
    def from_environment(cls) -> "Config":
        config = cls(
            base_url=os.environ.get("BASE_URL", "http://127.0.0.1:8000").rstrip("/"),
            auth_token=os.environ.get("AUTH_TOKEN") or None,
            project_id=_env_number("PROJECT_ID", int, None),
            defined_source_id=_env_number("DEFINED_SOURCE_ID", int, None),
            defined_destination_id=_env_number("DEFINED_DESTINATION_ID", int, None),
            max_retries=_env_number("MAX_RETRIES", int, 5),
            request_timeout=_env_number("REQUEST_TIMEOUT", float, 30.0),
            files_dir=Path(os.environ.get("FILES_DIR") or ".data/files"),
        )
        if config.max_retries < 0 or config.request_timeout <= 0:
            raise ExampleError("MAX_RETRIES must be 0 or more and REQUEST_TIMEOUT more than 0")
        given = (config.defined_source_id, config.defined_destination_id)
        if any(i is not None for i in given) and config.project_id is None:
            # The API refuses a connector whose source or destination is another project's.
            raise ExampleError("DEFINED_SOURCE_ID and DEFINED_DESTINATION_ID need PROJECT_ID too")
        return config


def _env_number(name: str, kind: type, default: Any) -> Any:
    value = os.environ.get(name)
    if not value:
        return default
    try:
        return kind(value)
    except ValueError:
        raise ExampleError(f"{name}={value!r} is not a number") from None


class ApiClient:
    """JSON over HTTP with a timeout on every request and retries of transient failures."""

    def __init__(self, config: Config) -> None:
        self._config = config
        self._session = requests.Session()
        self._session.headers["Accept"] = "application/json"
        if config.auth_token:
            self._session.headers["Authorization"] = f"Bearer {config.auth_token}"

    def send(
        self, method: str, path: str, body: Any = None, *, idempotent: bool = False
    ) -> requests.Response:
        """The API's answer, after retrying connection errors, timeouts, 502, 503 and 504.

        With `idempotent`, the request carries an Idempotency-Key made once here and sent again
        on every retry, so a server that honours it runs a retried POST only once.
        """
        headers = {"Idempotency-Key": str(uuid.uuid4())} if idempotent else {}
        print(f"-> {method} {path}")
        attempts = self._config.max_retries + 1
        for attempt in range(1, attempts + 1):
            try:
                response = self._session.request(
                    method,
                    self._config.base_url + path,
                    json=body,
                    headers=headers,
                    timeout=self._config.request_timeout,
                )
            except (requests.ConnectionError, requests.Timeout) as error:
                if attempt == attempts:
                    raise ExampleError(
                        f"{method} {path}: no answer from {self._config.base_url} "
                        f"after {attempts} attempts: {error}"
                    ) from error
                reason, delay = _describe(error), _backoff(attempt)
            else:
                if response.status_code not in RETRY_STATUSES or attempt == attempts:
                    return response
                reason = f"{response.status_code} {_detail(response)}"
                retry_after = _retry_after(response)
                delay = _backoff(attempt) if retry_after is None else retry_after
            print(f"   retry {attempt}/{attempts - 1} in {delay:.1f} s: {reason}")
            time.sleep(delay)
        raise AssertionError("unreachable: the last attempt returns or raises")

    def call(
        self, method: str, path: str, body: Any = None, *, expect: int, idempotent: bool = False
    ) -> Any:
        """The decoded JSON of an answer with status `expect` (None for 204); ApiError otherwise."""
        response = self.send(method, path, body, idempotent=idempotent)
        return self.check(method, path, response, expect)

    @staticmethod
    def check(method: str, path: str, response: requests.Response, expect: int) -> Any:
        if response.status_code != expect:
            raise ApiError(method, path, response.status_code, _detail(response))
        if response.status_code == 204:
            return None
        try:
            return response.json()
        except ValueError:
            raise ExampleError(f"{method} {path} answered {expect} without JSON") from None


def _backoff(attempt: int) -> float:
    # Full jitter: clients that failed together do not all come back at the same moment.
    return random.uniform(0, min(BACKOFF_CAP_SECONDS, BACKOFF_BASE_SECONDS * 2**attempt))


def _describe(error: requests.RequestException) -> str:
    # requests' own message nests urllib3's; a retry line only needs what kind of failure it was.
    if isinstance(error, requests.Timeout):
        return "no answer within REQUEST_TIMEOUT"
    return f"connection failed ({type(error).__name__})"


def _retry_after(response: requests.Response) -> float | None:
    """Seconds the server asked us to wait (delta-seconds or an HTTP date), if it did."""
    value = response.headers.get("Retry-After")
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = email.utils.parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError):
            return None
    return min(max(seconds, 0.0), RETRY_AFTER_CAP_SECONDS)


def _detail(response: requests.Response) -> str:
    """The API's `detail` (a 422's list as JSON), or the start of a body that is not the API's."""
    try:
        detail = response.json()["detail"]
    except (ValueError, KeyError, TypeError):
        return response.text[:500] or response.reason
    return detail if isinstance(detail, str) else json.dumps(detail)


def _expect(condition: bool, message: str) -> None:
    if not condition:
        raise ExampleError(message)


def _show(answer: dict[str, Any], *fields: str) -> None:
    print("   " + "  ".join(f"{field}={answer.get(field)}" for field in fields))


@dataclass
class Scaffold:
    """The project, defined source and defined destination the connector needs."""

    project_id: int
    defined_source_id: int
    defined_destination_id: int
    created: list[str]  # paths to DELETE afterwards, newest first
    folder: Path  # the project's folder, where the source and destination made here keep files
    files: list[Path]  # files in it of the source and destination made here
    own_folder: bool  # the folder did not exist before: removed afterwards when empty


def prepare(client: ApiClient, config: Config, suffix: str) -> Scaffold:
    """Use the ids given in the environment; create whatever is missing, with unique names."""
    created: list[str] = []
    project_id = config.project_id
    if project_id is None:
        project = client.call(
            "POST",
            "/api/v1/projects",
            {"name": f"Lifecycle example {suffix}", "description": "Made by the example"},
            expect=201,
        )
        project_id = project["id"]
        created.insert(0, f"/api/v1/projects/{project_id}")
        _show(project, "id", "name")

    # The worker reads and writes a project's files only in the project's folder under its file
    # root, and configs name them relative to it; so the example expects the worker on this
    # machine, with FILES_DIR as its file root.
    folder = config.files_dir / str(project_id)
    own_folder = not folder.exists()
    files: list[Path] = []
    source_id = config.defined_source_id
    if source_id is None:
        csv_path = folder / "customers.csv"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            csv_path.write_text(SAMPLE_CSV)
        except OSError as error:
            raise ExampleError(f"cannot write {csv_path} (FILES_DIR): {error}") from None
        files.append(csv_path)
        source = client.call(
            "POST",
            "/api/v1/defined-sources",
            {
                "name": f"Customers CSV {suffix}",
                "type": "csv",
                "config": {"path": "customers.csv"},
                "projectId": project_id,
            },
            expect=201,
        )
        source_id = source["id"]
        created.insert(0, f"/api/v1/defined-sources/{source_id}")
        _show(source, "id", "name", "type")

    destination_id = config.defined_destination_id
    if destination_id is None:
        files.append(folder / "out.jsonl")  # the worker writes it
        destination = client.call(
            "POST",
            "/api/v1/defined-destinations",
            {
                "name": f"Customers JSONL {suffix}",
                "type": "jsonl",
                "config": {"path": "out.jsonl"},
                "projectId": project_id,
            },
            expect=201,
        )
        destination_id = destination["id"]
        created.insert(0, f"/api/v1/defined-destinations/{destination_id}")
        _show(destination, "id", "name", "type")

    return Scaffold(project_id, source_id, destination_id, created, folder, files, own_folder)


def wait_for_run(client: ApiClient, connector_id: int, flow_run_id: str) -> None:
    """Poll the connector's runs until the triggered one finishes; it must complete."""
    path = f"/api/v1/connectors/{connector_id}/runs"
    deadline = time.monotonic() + RUN_DEADLINE_SECONDS
    while True:
        response = client.send("GET", path)
        # FastAPI's own 404 for an unknown route says just "Not Found"; a missing connector
        # says which one, and is a real failure.
        if response.status_code == 404 and _detail(response) == "Not Found":
            print("   this API has no /runs route: checking the connector and waiting 5 s")
            client.call("GET", f"/api/v1/connectors/{connector_id}", expect=200)
            time.sleep(5)
            return
        runs = ApiClient.check("GET", path, response, 200).get("data", [])
        run = next((r for r in runs if str(r.get("flowRunId")) == flow_run_id), None)
        state = str(run.get("state")).upper() if run else "NOT LISTED YET"
        print(f"   flowRunId={flow_run_id}  state={state}")
        if state in FINISHED_STATES:
            _expect(state == "COMPLETED", f"flow run {flow_run_id} ended {state}")
            return
        if time.monotonic() > deadline:
            raise ExampleError(
                f"flow run {flow_run_id} is still {state} after {RUN_DEADLINE_SECONDS} s"
            )
        time.sleep(RUN_POLL_SECONDS)


def run_lifecycle(client: ApiClient, scaffold: Scaffold, suffix: str) -> None:
    print("\n[1/5] Create the connector with a schedule")
    connector = client.call(
        "POST",
        "/api/v1/connectors",
        {
            "name": f"Customer Data Pipeline {suffix}",
            "description": "Copies customers.csv to out.jsonl every four hours",
            "projectId": scaffold.project_id,
            "definedSourceId": scaffold.defined_source_id,
            "definedDestinationId": scaffold.defined_destination_id,
            "schedule": "0 */4 * * *",
            "isActive": True,
            "sourceConfigOverride": {},
            "destinationConfigOverride": {},
        },
        expect=201,
        idempotent=True,
    )
    _show(connector, "id", "prefectDeploymentId", "schedule", "nextRunAt")
    _expect(connector.get("prefectDeploymentId") is not None, "the connector has no deployment")
    _expect(connector.get("schedule") == "0 */4 * * *", "the schedule was not stored")
    path = f"/api/v1/connectors/{connector['id']}"

    print("\n[2/5] Change its schedule")
    connector = client.call("PATCH", path, {"schedule": "0 */6 * * *"}, expect=200)
    _show(connector, "id", "prefectDeploymentId", "schedule", "nextRunAt")
    _expect(connector.get("schedule") == "0 */6 * * *", "the new schedule was not stored")
    _expect(connector.get("prefectDeploymentId") is not None, "the deployment is gone")

    print("\n[3/5] Trigger a run now and wait for it to finish")
    result = client.call("POST", f"{path}/trigger", expect=200, idempotent=True)
    _show(result, "status", "result", "flowRunId")
    _expect(result.get("status") == "success", "the trigger did not succeed")
    _expect(bool(result.get("flowRunId")), "the trigger answered no flowRunId")
    wait_for_run(client, connector["id"], result["flowRunId"])

    print("\n[4/5] Deactivate it")
    connector = client.call("PATCH", path, {"isActive": False}, expect=200)
    _show(connector, "id", "prefectDeploymentId", "isActive", "nextRunAt")
    _expect(connector.get("prefectDeploymentId") is None, "the deployment is still there")

    print("\n[5/5] Delete it")
    client.call("DELETE", path, expect=204)
    print("   204 No Content")
    response = client.send("GET", path)
    _expect(response.status_code == 404, f"GET after DELETE answered {response.status_code}")
    print(f"   404 {_detail(response)}")


def clean_up(client: ApiClient, scaffold: Scaffold) -> None:
    """Delete what `prepare` created, so reruns leave nothing behind."""
    if scaffold.created:
        print("\nClean up what the example created")
    for path in scaffold.created:
        client.call("DELETE", path, expect=204)
    for file in scaffold.files:
        file.unlink(missing_ok=True)
    if scaffold.files and scaffold.own_folder:
        with contextlib.suppress(OSError):  # not empty: files that are not the example's
            scaffold.folder.rmdir()


def main() -> int:
    try:
        config = Config.from_environment()
        client = ApiClient(config)
        print(f"Control plane API: {config.base_url}")
        # Unique names, because the API answers 409 to a name its project already has.
        suffix = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
        scaffold = prepare(client, config, suffix)
        run_lifecycle(client, scaffold, suffix)
        clean_up(client, scaffold)
    except ExampleError as error:
        sys.stdout.flush()  # so the progress so far comes before the failure, even when piped
        print(f"\nFAILED: {error}", file=sys.stderr)
        return 1
    print("\nPASSED: all 5 lifecycle steps (create, reschedule, trigger, deactivate, delete)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
