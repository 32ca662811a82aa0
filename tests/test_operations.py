"""Operating many connectors: timed pauses that end by themselves, labels, bulk actions and
destinations that take a limited number of runs at a time."""

from datetime import UTC, datetime, timedelta
from uuid import UUID

import httpx
import pytest
from prefect.client.orchestration import SyncPrefectClient

from tests.helpers import Catalog, control_runs, created, prefect_events, wait_final
from tests.stack import wait_for


def _in(seconds: float) -> str:
    return (datetime.now(UTC) + timedelta(seconds=seconds)).isoformat()


class TestTimedPause:
    @pytest.mark.usefixtures("control_deployments")
    def test_a_pause_stops_the_connector_and_ends_by_itself(
        self, api: httpx.Client, prefect: SyncPrefectClient, catalog: Catalog, prefect_api_url
    ):
        since = datetime.now(UTC) - timedelta(seconds=5)
        connector = created(api.post("/connectors", json=catalog.connector()))
        path = f"/connectors/{connector['id']}"
        pause = {"pausedUntil": _in(8), "pauseReason": "warehouse maintenance"}
        paused = api.patch(path, json=pause)
        assert paused.status_code == 200, paused.text
        assert paused.json()["pauseReason"] == "warehouse maintenance"
        deployment_id = UUID(connector["prefectDeploymentId"])
        assert prefect.read_deployment(deployment_id).paused

        refused = api.post(f"{path}/trigger")
        assert refused.status_code == 409
        assert "paused until" in refused.text and "warehouse maintenance" in refused.text

        resumed = wait_for(
            lambda: (body := api.get(path).json())["pausedUntil"] is None and body,
            timeout=90,
            what="the pause to end by itself",
        )
        assert resumed["pauseReason"] is None
        assert not prefect.read_deployment(deployment_id).paused
        [resume] = [
            r for r in control_runs(prefect, connector["id"]) if r.name.startswith("resume")
        ]
        assert wait_final(prefect, resume.id).state.is_completed()
        assert "actor:schedule" in resume.tags
        assert api.post(f"{path}/trigger").status_code == 200
        names = wait_for(
            lambda: (
                {
                    e["event"]
                    for e in prefect_events(prefect_api_url, f"connector.{connector['id']}", since)
                }
                >= {"connector.paused", "connector.resumed"}
            ),
            timeout=30,
            what="the pause's events",
        )
        assert names

    @pytest.mark.parametrize(
        ("value", "says"),
        [
            ("2020-01-01T00:00:00Z", "not in the future"),
            ("2999-01-01T00:00:00Z", "366 days"),
            ("2030-01-01T00:00:00", "time zone"),
        ],
    )
    def test_a_pause_end_that_cannot_be_is_refused(
        self, api: httpx.Client, catalog: Catalog, value: str, says: str
    ):
        connector = created(api.post("/connectors", json=catalog.connector()))
        response = api.patch(f"/connectors/{connector['id']}", json={"pausedUntil": value})
        assert response.status_code == 422
        [error] = response.json()["detail"]
        assert error["loc"][-1] == "pausedUntil" and says in error["msg"]
        assert api.get(f"/connectors/{connector['id']}").json()["version"] == connector["version"]
