"""Notifications: a connector's events reach the channels its routes (or its project's) name,
each once, signed, through Prefect's automation and a `notify-owners` control run."""

import hashlib
import hmac
import json
import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from prefect.blocks.notifications import CustomWebhookNotificationBlock
from prefect.blocks.system import Secret
from prefect.client.orchestration import SyncPrefectClient

from bench._seed import Catalog, created, unique
from control_plane.notify import DELIVERY_HEADER, SIGNATURE_HEADER, SignedWebhook
from control_plane.processes import free_port, wait_for
from tests.helpers import (
    POSTGRESQL_ONLY,
    control_runs,
    prefect_events,
    trigger_and_wait,
    wait_final,
)


@dataclass
class Receiver:
    """A webhook receiver on this machine: what each POST brought, headers and body."""

    url: str
    deliveries: list[tuple[dict[str, str], bytes]] = field(default_factory=list)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    got: list[tuple[dict[str, str], bytes]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            got.append((dict(self.headers), body))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield Receiver(f"http://127.0.0.1:{server.server_port}/hook", got)
    server.shutdown()
    server.server_close()


def _channel(url: str, secret: str) -> str:
    name = unique("hook")
    SignedWebhook(url=url, secret=secret).save(name)
    return f"signed-webhook/{name}"


def _verified(secret: str, headers: dict[str, str], body: bytes) -> dict:
    """The delivery's body, once its signature holds, as a receiver checks it."""
    parts = dict(part.split("=", 1) for part in headers[SIGNATURE_HEADER].split(","))
    expected = hmac.new(
        secret.encode(), parts["t"].encode() + b"." + body, hashlib.sha256
    ).hexdigest()
    assert hmac.compare_digest(expected, parts["v1"])
    assert abs(datetime.now(UTC).timestamp() - int(parts["t"])) < 300
    return json.loads(body)


def _failing(catalog: Catalog, **fields) -> dict:
    """A connector whose runs fail: its source file does not exist."""
    return catalog.connector(sourceConfigOverride={"path": "missing.csv"}, **fields)


class TestNotifications:
    @pytest.mark.usefixtures("control_deployments")
    @POSTGRESQL_ONLY
    def test_a_failed_run_reaches_the_project_routes_once_signed_and_a_dead_one_fails_alone(
        self,
        api: httpx.Client,
        prefect: SyncPrefectClient,
        catalog: Catalog,
        receiver: Receiver,
        prefect_api_url: str,
    ):
        secret = secrets.token_urlsafe(24)
        good = _channel(receiver.url, secret)
        dead = _channel(f"http://127.0.0.1:{free_port()}/hook", secrets.token_urlsafe(24))
        # One of Prefect's own blocks, as Slack's or Teams' would be: it gets the text.
        plain = unique("plain")
        CustomWebhookNotificationBlock(
            name=plain, url=receiver.url, json_data={"text": "{{subject}}: {{body}}"}
        ).save(plain)
        routes = [
            {"events": ["run-failed"], "channel": good},
            {"events": ["run-failed", "stale"], "channel": dead},
            {"events": ["run-failed"], "channel": f"custom-webhook/{plain}"},
        ]
        project = api.patch(
            f"/projects/{catalog.project_id}",
            json={"owners": ["data-team@example.com"], "notifications": routes},
        )
        assert project.status_code == 200, project.text
        # Its own (empty) routes win over the project's: no notification of its failures.
        quiet = created(api.post("/connectors", json=_failing(catalog, notifications=[])))
        connector = created(api.post("/connectors", json=_failing(catalog)))
        assert connector["notifications"] is None

        since = datetime.now(UTC) - timedelta(seconds=5)
        run = trigger_and_wait(api, prefect, connector["id"])
        assert run.state.is_failed()
        assert trigger_and_wait(api, prefect, quiet["id"]).state.is_failed()

        notify_run = wait_for(
            lambda: next(
                (r for r in control_runs(prefect, connector["id"]) if r.name.startswith("notify")),
                None,
            ),
            timeout=60,
            what="the notify-owners run of the failed run",
        )
        ended = wait_final(prefect, notify_run.id)
        # The dead receiver fails the notify run, alone: the lifecycle went on, the good one heard.
        assert ended.state.is_failed()
        assert dead in ended.state.message and "cannot be reached" in ended.state.message
        assert good not in ended.state.message
        assert len(receiver.deliveries) == 2
        [(headers, body)] = [d for d in receiver.deliveries if SIGNATURE_HEADER in d[0]]
        said = _verified(secret, headers, body)
        assert said["event"] == "connector.run-failed"
        assert said["connector"]["id"] == connector["id"]
        assert said["connector"]["owners"] == ["data-team@example.com"]
        assert said["connector"]["project"]["id"] == catalog.project_id
        assert str(run.id) in said["runUrl"] and "missing.csv" in said["reason"]
        assert f"Run: {said['runUrl']}" in said["text"]
        assert headers[DELIVERY_HEADER].endswith(f"/{good}")
        assert secret not in body.decode() and secret not in ended.state.message
        [(_, text)] = [d for d in receiver.deliveries if SIGNATURE_HEADER not in d[0]]
        assert json.loads(text)["text"] == f"{said['subject']}: {said['text']}"

        # Prefect's event persister writes in batches: the quiet run's event may come later.
        [failed] = wait_for(
            lambda: [
                e
                for e in prefect_events(prefect_api_url, f"connector.{quiet['id']}", since)
                if e["event"] == "connector.run-failed"
            ],
            timeout=30,
            what="the quiet connector's connector.run-failed event",
        )
        assert "notify" not in failed["resource"]
        assert not [r for r in control_runs(prefect, quiet["id"]) if r.name.startswith("notify")]

    def test_a_route_to_a_block_that_is_missing_or_sends_nothing_is_refused(
        self, api: httpx.Client, catalog: Catalog, prefect_api_url: str
    ):
        name = unique("not-a-channel")
        Secret(value="x").save(name)
        for channel, says in (
            ("signed-webhook/does-not-exist", "Prefect has no block"),
            (f"secret/{name}", "sends no notifications"),
        ):
            routes = [{"events": ["stale"], "channel": channel}]
            response = api.post("/connectors", json=catalog.connector(notifications=routes))
            assert response.status_code == 422, response.text
            assert "notifications" in response.text and says in response.text
        for dry_run in ("true", "false"):
            project = api.patch(
                f"/projects/{catalog.project_id}",
                params={"dryRun": dry_run},
                json={"notifications": [{"events": ["stale"], "channel": f"secret/{name}"}]},
            )
            assert project.status_code == 422, project.text
        assert api.get(f"/projects/{catalog.project_id}").json()["notifications"] == []

    def test_a_route_names_known_events(self, api: httpx.Client, catalog: Catalog):
        routes = [{"events": ["exploded"], "channel": "signed-webhook/x"}]
        response = api.post("/connectors", json=catalog.connector(notifications=routes))
        assert response.status_code == 422
        assert "run-failed" in response.text
