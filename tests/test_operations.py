"""Operating many connectors: timed pauses that end by themselves, labels, bulk actions and
destinations that take a limited number of runs at a time."""

from datetime import UTC, datetime, timedelta
from uuid import UUID, uuid4

import httpx
import pytest
from prefect.client.orchestration import SyncPrefectClient

from bench._seed import Catalog, created
from control_plane.processes import wait_for
from tests.helpers import (
    POSTGRESQL_ONLY,
    control_runs,
    prefect_events,
    trigger_and_wait,
    wait_final,
)


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


class TestProjectFreeze:
    @pytest.mark.usefixtures("control_deployments")
    def test_a_frozen_project_refuses_triggers_until_its_freeze_ends(
        self, api: httpx.Client, prefect: SyncPrefectClient, catalog: Catalog
    ):
        before = created(api.post("/connectors", json=catalog.connector()))
        paused_too = created(api.post("/connectors", json=catalog.connector(pausedUntil=_in(3600))))
        path = f"/projects/{catalog.project_id}"
        freeze = {"reason": "quarter-end close", "until": _in(8)}
        frozen = api.post(f"{path}/freeze", json=freeze)
        assert frozen.status_code == 200, frozen.text
        assert frozen.json()["freezeReason"] == "quarter-end close"
        during = created(api.post("/connectors", json=catalog.connector()))
        for connector in (before, during):
            assert prefect.read_deployment(UUID(connector["prefectDeploymentId"])).paused
            refused = api.post(f"/connectors/{connector['id']}/trigger")
            assert refused.status_code == 409
            assert "frozen" in refused.text and "quarter-end close" in refused.text

        wait_for(
            lambda: api.get(path).json()["freezeReason"] is None,
            timeout=90,
            what="the freeze to end by itself",
        )
        # The row first, then the deployments follow.
        wait_for(
            lambda: (
                not any(
                    prefect.read_deployment(UUID(c["prefectDeploymentId"])).paused
                    for c in (before, during)
                )
            ),
            timeout=30,
            what="the deployments to be unpaused",
        )
        # Its own pause outlasts the project's freeze.
        assert prefect.read_deployment(UUID(paused_too["prefectDeploymentId"])).paused
        assert api.post(f"/connectors/{before['id']}/trigger").status_code == 200

    def test_a_freeze_needs_a_reason(self, api: httpx.Client, catalog: Catalog):
        response = api.post(f"/projects/{catalog.project_id}/freeze", json={})
        assert response.status_code == 422
        assert response.json()["detail"][0]["loc"][-1] == "reason"
        assert api.get(f"/projects/{catalog.project_id}").json()["freezeReason"] is None


class TestLabelsAndBulkActions:
    def _labelled(self, api: httpx.Client, catalog: Catalog, label: str) -> list[dict]:
        bodies = [
            catalog.connector(labels=[label, "tier-1"]),
            catalog.connector(labels=[label]),
            catalog.connector(labels=[label], isActive=False),
            catalog.connector(labels=["tier-1"]),
        ]
        return [created(api.post("/connectors", json=body)) for body in bodies]

    def test_labels_filter_the_list(self, api: httpx.Client, catalog: Catalog):
        label = f"team:{uuid4().hex[:8]}"
        connectors = self._labelled(api, catalog, label)
        assert connectors[0]["labels"] == sorted([label, "tier-1"])
        listed = api.get("/connectors", params={"label": [label, "tier-1"]}).json()
        assert [c["id"] for c in listed["data"]] == [connectors[0]["id"]]
        assert api.get("/connectors", params={"label": label}).json()["count"] == 3
        refused = api.get("/connectors", params={"label": 'a"b'})
        assert refused.status_code == 422

    def test_a_dry_run_plans_and_changes_nothing(
        self, api: httpx.Client, prefect: SyncPrefectClient, catalog: Catalog
    ):
        label = f"team:{uuid4().hex[:8]}"
        connectors = self._labelled(api, catalog, label)
        body = {"selector": {"labels": [label]}, "action": "deactivate", "reason": "cleanup"}
        response = api.post("/connectors/bulk", params={"dryRun": "true"}, json=body)
        assert response.status_code == 200, response.text
        answer = response.json()
        assert (answer["dryRun"], answer["selected"], answer["changed"]) == (True, 3, 0)
        outcomes = {r["connectorId"]: r for r in answer["results"]}
        assert [outcomes[c["id"]]["outcome"] for c in connectors[:3]] == [
            "planned",
            "planned",
            "unchanged",
        ]
        assert outcomes[connectors[0]["id"]]["changes"][0]["field"] == "isActive"
        for connector in connectors:
            assert api.get(f"/connectors/{connector['id']}").json()["version"] == 1
        assert prefect.read_flow_run(UUID(answer["flowRunId"])).state.is_completed()

    def test_a_bulk_trigger_reports_each_connector(
        self, api: httpx.Client, prefect: SyncPrefectClient, catalog: Catalog
    ):
        label = f"team:{uuid4().hex[:8]}"
        connectors = self._labelled(api, catalog, label)
        missing = 2**31 - 1
        ids = [c["id"] for c in connectors[:3]] + [missing]
        body = {"selector": {"ids": ids, "labels": [label]}, "action": "trigger"}
        response = api.post("/connectors/bulk", json=body)
        assert response.status_code == 200, response.text
        answer = response.json()
        assert (answer["selected"], answer["changed"], answer["failed"]) == (4, 2, 2)
        outcomes = {r["connectorId"]: r for r in answer["results"]}
        for connector in connectors[:2]:
            outcome = outcomes[connector["id"]]
            assert outcome["outcome"] == "changed" and outcome["syncRunId"]
            control = prefect.read_flow_run(UUID(outcome["flowRunId"]))
            assert control.name == f"trigger connector {connector['id']}"
        inactive = outcomes[connectors[2]["id"]]
        assert inactive["outcome"] == "failed" and "inactive" in inactive["error"]
        assert prefect.read_flow_run(UUID(inactive["flowRunId"])).state.is_failed()
        assert outcomes[missing]["error"] == f"connector {missing} does not exist"

    @pytest.mark.parametrize(
        ("body", "field"),
        [
            ({"selector": {}, "action": "trigger"}, "selector"),
            ({"selector": {"labels": ["x"]}, "action": "deactivate"}, ""),
            ({"selector": {"labels": ["x"]}, "action": "update"}, ""),
            ({"selector": {"labels": ["x"]}, "action": "update", "changes": {"name": "a"}}, "name"),
        ],
    )
    def test_a_bulk_request_that_says_too_little_is_refused(
        self, api: httpx.Client, body: dict, field: str
    ):
        response = api.post("/connectors/bulk", json=body)
        assert response.status_code == 422, response.text
        [error] = response.json()["detail"]
        assert field in [str(part) for part in error["loc"]] or not field


class TestDestinationLimit:
    @POSTGRESQL_ONLY
    def test_runs_into_a_limited_destination_take_turns(
        self, api: httpx.Client, prefect: SyncPrefectClient, catalog: Catalog, stack
    ):
        destination = created(
            api.post(
                "/defined-destinations",
                json={
                    "name": f"warehouse-{uuid4().hex[:6]}",
                    "type": "jsonl",
                    "config": {"path": "limited.jsonl"},
                    "projectId": catalog.project_id,
                    "maxConcurrentRuns": 1,
                },
            )
        )
        assert destination["maxConcurrentRuns"] == 1
        queue = prefect.read_work_queue_by_name(
            f"destination-{destination['id']}", work_pool_name=stack.work_pool
        )
        assert queue.concurrency_limit == 1
        connectors = [
            created(
                api.post(
                    "/connectors",
                    json=catalog.connector(definedDestinationId=destination["id"]),
                )
            )
            for _ in range(3)
        ]
        deployment = prefect.read_deployment(UUID(connectors[0]["prefectDeploymentId"]))
        assert deployment.work_queue_name == queue.name
        run_ids = [
            api.post(f"/connectors/{c['id']}/trigger").json()["flowRunId"] for c in connectors
        ]
        ended = [wait_final(prefect, run_id, timeout=120) for run_id in run_ids]
        assert all(run.state.is_completed() for run in ended)
        spans = sorted((run.start_time, run.end_time) for run in ended)
        for (_, end), (start, _) in zip(spans, spans[1:], strict=False):
            assert start >= end, spans

    def test_a_source_has_no_run_limit(self, api: httpx.Client, catalog: Catalog):
        body = {
            "name": f"src-{uuid4().hex[:6]}",
            "type": "csv",
            "config": {"path": "in.csv"},
            "projectId": catalog.project_id,
            "maxConcurrentRuns": 2,
        }
        response = api.post("/defined-sources", json=body)
        assert response.status_code == 422
        assert response.json()["detail"][0]["loc"][-1] == "maxConcurrentRuns"


class TestFreshness:
    @pytest.mark.usefixtures("control_deployments")
    @POSTGRESQL_ONLY
    def test_a_connector_goes_stale_and_fresh_again(
        self, api: httpx.Client, prefect: SyncPrefectClient, catalog: Catalog, prefect_api_url
    ):
        since = datetime.now(UTC) - timedelta(seconds=5)
        connector = created(api.post("/connectors", json=catalog.connector(maxStaleness="PT10S")))
        assert (connector["maxStaleness"], connector["freshness"]) == ("PT10S", "fresh")
        path = f"/connectors/{connector['id']}"
        stale = wait_for(
            lambda: (body := api.get(path).json())["freshness"] == "stale" and body,
            timeout=90,
            what="the connector to go stale",
        )
        created_at = datetime.fromisoformat(connector["createdAt"])
        assert datetime.fromisoformat(stale["staleSince"]) == created_at + timedelta(seconds=10)

        assert trigger_and_wait(api, prefect, connector["id"]).state.is_completed()
        fresh = api.get(path).json()
        assert (fresh["freshness"], fresh["staleSince"]) == ("fresh", None)
        names = wait_for(
            lambda: (
                [
                    e["event"]
                    for e in prefect_events(prefect_api_url, f"connector.{connector['id']}", since)
                    if e["event"] in ("connector.stale", "connector.fresh")
                ]
                == ["connector.stale", "connector.fresh"]
                or None
            ),
            timeout=30,
            what="one connector.stale, then connector.fresh",
        )
        assert names

    @pytest.mark.parametrize(("value", "stored"), [(90, "PT1H30M"), ("P1D", "P1D"), (0, "PT0S")])
    def test_a_window_is_minutes_or_an_iso_duration(
        self, api: httpx.Client, catalog: Catalog, value, stored: str
    ):
        connector = created(api.post("/connectors", json=catalog.connector(maxStaleness=value)))
        assert connector["maxStaleness"] == stored

    def test_a_window_under_ten_seconds_is_refused(self, api: httpx.Client, catalog: Catalog):
        response = api.post("/connectors", json=catalog.connector(maxStaleness="PT5S"))
        assert response.status_code == 422
        [error] = response.json()["detail"]
        assert error["loc"][-1] == "maxStaleness" and "10 seconds" in error["msg"]
