"""Bad input gets a 4xx naming the field, and nothing stored changes, in the DB or in Prefect."""

from uuid import UUID

import httpx
import pytest
from prefect.client.orchestration import SyncPrefectClient

from bench._seed import Catalog, created

UNKNOWN_ID = 987654321


@pytest.fixture
def connector(api: httpx.Client, catalog: Catalog) -> dict:
    return created(api.post("/connectors", json=catalog.connector()))


def _field_of(response: httpx.Response) -> str:
    [error] = response.json()["detail"]
    return str(error["loc"][-1]) if len(error["loc"]) > 1 else ""


def _snapshot(api: httpx.Client, prefect: SyncPrefectClient, connector: dict):
    row = api.get(f"/connectors/{connector['id']}").json()
    row.pop("nextRunAt")
    deployment = prefect.read_deployment(UUID(connector["prefectDeploymentId"]))
    return row, deployment.updated, deployment.schedules


BAD_CONNECTOR_FIELDS = [
    ({"schedule": "61 * * * *"}, "schedule"),
    ({"schedule": "* * * *"}, "schedule"),
    ({"schedule": "0 0 * * * *"}, "schedule"),
    ({"timezone": "Mars/Olympus_Mons"}, "timezone"),
    ({"isActive": "maybe"}, "isActive"),
    ({"projectId": "abc"}, "projectId"),
    ({"name": ""}, "name"),
    ({"name": "x" * 201}, "name"),
    ({"sourceConfigOverride": "path"}, "sourceConfigOverride"),
    ({"unknownField": 1}, "unknownField"),
]


class TestBadConnectorUpdate:
    @pytest.mark.parametrize(("body", "field"), BAD_CONNECTOR_FIELDS + [({"name": None}, "name")])
    def test_refused_with_the_field_and_nothing_changes(self, api, prefect, connector, body, field):
        before = _snapshot(api, prefect, connector)
        response = api.patch(f"/connectors/{connector['id']}", json=body)
        assert response.status_code == 422, response.text
        assert _field_of(response) == field
        assert _snapshot(api, prefect, connector) == before

    @pytest.mark.parametrize(
        ("body", "field"),
        [
            ({"definedSourceId": UNKNOWN_ID}, "definedSourceId"),
            ({"definedDestinationId": UNKNOWN_ID}, "definedDestinationId"),
            ({"projectId": UNKNOWN_ID}, "projectId"),
            ({"sourceConfigOverride": {"path": 5}}, "sourceConfigOverride"),
            ({"destinationConfigOverride": {"nope": 1}}, "destinationConfigOverride"),
        ],
    )
    def test_references_and_overrides_are_checked(self, api, prefect, connector, body, field):
        before = _snapshot(api, prefect, connector)
        response = api.patch(f"/connectors/{connector['id']}", json=body)
        assert response.status_code == 422, response.text
        assert _field_of(response) == field
        assert _snapshot(api, prefect, connector) == before

    def test_a_duplicate_name_is_a_conflict(self, api, prefect, catalog, connector):
        other = created(api.post("/connectors", json=catalog.connector()))
        before = _snapshot(api, prefect, other)
        response = api.patch(f"/connectors/{other['id']}", json={"name": connector["name"]})
        assert response.status_code == 409, response.text
        assert connector["name"] in response.json()["detail"]
        assert _snapshot(api, prefect, other) == before


class TestBadConnectorCreate:
    @pytest.mark.parametrize(("body", "field"), BAD_CONNECTOR_FIELDS)
    def test_refused_with_the_field_and_nothing_is_stored(self, api, catalog, body, field):
        response = api.post("/connectors", json=catalog.connector(**body))
        assert response.status_code == 422, response.text
        assert _field_of(response) == field
        assert api.get("/connectors", params={"projectId": catalog.project_id}).json()["count"] == 0

    @pytest.mark.parametrize("missing", ["name", "projectId", "definedSourceId"])
    def test_a_missing_field_is_named(self, api, catalog, missing):
        body = catalog.connector()
        del body[missing]
        response = api.post("/connectors", json=body)
        assert response.status_code == 422
        assert _field_of(response) == missing

    def test_a_source_of_another_project_is_refused(self, api, catalog):
        other = created(api.post("/projects", json={"name": f"other-{catalog.project_id}"}))
        body = catalog.connector(projectId=other["id"])
        response = api.post("/connectors", json=body)
        assert response.status_code == 422, response.text
        assert "belongs to project" in response.text
        assert api.get("/connectors", params={"projectId": other["id"]}).json()["count"] == 0

    def test_a_duplicate_name_in_the_project_is_a_conflict(self, api, prefect, catalog):
        first = created(api.post("/connectors", json=catalog.connector()))
        response = api.post("/connectors", json=catalog.connector(name=first["name"]))
        assert response.status_code == 409, response.text
        listed = api.get("/connectors", params={"projectId": catalog.project_id}).json()
        assert [c["id"] for c in listed["data"]] == [first["id"]]
        assert prefect.read_deployment(UUID(first["prefectDeploymentId"])).parameters == {
            "connector_id": first["id"]
        }


class TestUnknownAndInactive:
    @pytest.mark.parametrize(
        ("method", "path"),
        [
            ("GET", "/connectors/{id}"),
            ("PATCH", "/connectors/{id}"),
            ("DELETE", "/connectors/{id}"),
            ("POST", "/connectors/{id}/trigger"),
            ("GET", "/projects/{id}"),
            ("GET", "/defined-sources/{id}"),
            ("DELETE", "/defined-destinations/{id}"),
        ],
    )
    def test_unknown_ids_are_404(self, api, method, path):
        body = {"description": "x"} if method == "PATCH" else None
        response = api.request(method, path.format(id=UNKNOWN_ID), json=body)
        assert response.status_code == 404, response.text
        assert str(UNKNOWN_ID) in response.json()["detail"]

    def test_a_path_id_that_is_no_number_is_422(self, api):
        assert api.get("/connectors/abc").status_code == 422

    def test_triggering_an_inactive_connector_is_a_conflict(self, api, catalog):
        connector = created(api.post("/connectors", json=catalog.connector(isActive=False)))
        assert connector["prefectDeploymentId"] is None
        response = api.post(f"/connectors/{connector['id']}/trigger")
        assert response.status_code == 409
        assert "inactive" in response.json()["detail"]
