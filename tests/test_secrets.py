"""Secrets in source and destination configs never come back from the API in clear, and never
reach Prefect: not in flow runs, deployments, logs, events or artifacts."""

import secrets
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
from sqlalchemy import create_engine, text

from bench._seed import POSTGRES_ADMIN_URL, created, unique
from control_plane.encryption import decrypt_json
from tests.helpers import trigger_and_wait

MASK = "********"


def _url_with(password: str) -> str:
    # PostgreSQL here trusts local connections, so any password works, and the run succeeds.
    return POSTGRES_ADMIN_URL.replace(
        "postgresql://postgres@", f"postgresql+psycopg://postgres:{password}@"
    )


def _prefect_answers(prefect_api_url: str, connector_id: int, since: datetime) -> str:
    """Everything Prefect's API says about the connector's runs, deployment, logs and events."""
    tag = {"tags": {"all_": [f"connector:{connector_id}"]}}
    with httpx.Client(base_url=prefect_api_url, timeout=30) as prefect:
        runs = prefect.post("/flow_runs/filter", json={"flow_runs": tag}).json()
        run_ids = [run["id"] for run in runs]
        answers = [
            runs,
            prefect.post("/deployments/filter", json={"deployments": tag}).json(),
            prefect.post("/logs/filter", json={"logs": {"flow_run_id": {"any_": run_ids}}}).json(),
            prefect.post(
                "/artifacts/filter", json={"artifacts": {"flow_run_id": {"any_": run_ids}}}
            ).json(),
            prefect.post(
                "/events/filter",
                json={"filter": {"occurred": {"since": since.isoformat()}}, "limit": 200},
            ).json(),
        ]
    return repr(answers)


class TestSecrets:
    def test_masked_in_answers_and_absent_from_prefect(
        self, api: httpx.Client, prefect, prefect_api_url, stack
    ):
        since = datetime.now(UTC) - timedelta(seconds=5)
        stored, override = secrets.token_hex(12), secrets.token_hex(12)
        project = created(api.post("/projects", json={"name": unique("secrets")}))
        source = created(
            api.post(
                "/defined-sources",
                json={
                    "name": unique("pg"),
                    "type": "sql",
                    "config": {"url": _url_with(stored), "query": "SELECT 1 AS one"},
                    "projectId": project["id"],
                },
            )
        )
        assert source["config"]["url"] == _url_with(MASK)
        destination = created(
            api.post(
                "/defined-destinations",
                json={
                    "name": unique("out"),
                    "type": "jsonl",
                    "config": {"path": "secret.jsonl"},  # in the project's folder
                    "projectId": project["id"],
                },
            )
        )
        connector = created(
            api.post(
                "/connectors",
                json={
                    "name": unique("secret"),
                    "projectId": project["id"],
                    "definedSourceId": source["id"],
                    "definedDestinationId": destination["id"],
                    "sourceConfigOverride": {"url": _url_with(override)},
                },
            )
        )
        assert connector["sourceConfigOverride"]["url"] == _url_with(MASK)

        # A client that sends the masked config back keeps the stored secret.
        shown = api.get(f"/defined-sources/{source['id']}").json()["config"]
        assert api.patch(f"/defined-sources/{source['id']}", json={"config": shown}).is_success
        engine = create_engine(stack.database_url)
        with engine.begin() as db:
            [config] = db.execute(
                text("SELECT config FROM defined_source WHERE id = :id"), {"id": source["id"]}
            ).one()
        engine.dispose()
        # Stored encrypted (tests/test_secrets_at_rest.py), and the secret is still the one sent.
        assert stored not in config
        key_file = Path(stack.env["CONTROL_PLANE_SECRET_KEY_FILE"])
        assert decrypt_json(config, key_file=key_file)["url"] == _url_with(stored)

        run = trigger_and_wait(api, prefect, connector["id"])
        assert run.state.is_completed(), run.state
        listed = api.get("/connectors", params={"projectId": project["id"]}).text
        answers = _prefect_answers(prefect_api_url, connector["id"], since)
        assert str(run.id) in answers  # the search did find the run's records
        for secret in (stored, override):
            assert secret not in answers
            assert secret not in listed
