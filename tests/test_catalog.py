"""Projects, defined sources and destinations, their types, and what refuses to be deleted."""

import httpx
import pytest

from bench._seed import Catalog, created, unique


class TestProjects:
    def test_crud(self, api: httpx.Client):
        project = created(api.post("/projects", json={"name": unique("p"), "description": "d"}))
        assert api.get(f"/projects/{project['id']}").json()["description"] == "d"
        response = api.patch(f"/projects/{project['id']}", json={"description": None})
        assert response.status_code == 200 and response.json()["description"] is None
        listed = api.get("/projects", params={"limit": 1000}).json()
        assert project["id"] in [p["id"] for p in listed["data"]]
        assert api.delete(f"/projects/{project['id']}").status_code == 204
        assert api.get(f"/projects/{project['id']}").status_code == 404

    def test_duplicate_names_conflict(self, api: httpx.Client):
        name = unique("p")
        created(api.post("/projects", json={"name": name}))
        assert api.post("/projects", json={"name": name}).status_code == 409

    def test_a_project_in_use_is_not_deleted(self, api: httpx.Client, catalog: Catalog):
        connector = created(api.post("/connectors", json=catalog.connector()))
        response = api.delete(f"/projects/{catalog.project_id}")
        assert response.status_code == 409
        assert connector["name"] in response.json()["detail"]
        assert api.get(f"/projects/{catalog.project_id}").status_code == 200


class TestEndpoints:
    def test_types_list_their_config_schema(self, api: httpx.Client):
        types = {(t["kind"], t["type"]): t for t in api.get("/types").json()["data"]}
        assert {("source", "csv"), ("source", "sql"), ("destination", "jsonl")} <= types.keys()
        assert "path" in types[("source", "csv")]["configSchema"]["properties"]

    def test_an_unknown_type_lists_the_known_ones(self, api: httpx.Client, catalog: Catalog):
        body = {"name": unique("s"), "type": "ftp", "config": {}, "projectId": catalog.project_id}
        response = api.post("/defined-sources", json=body)
        assert response.status_code == 422
        assert "known: airbyte, csv, http, jsonl, rest_api, sql" in response.text

    @pytest.mark.parametrize(
        ("config", "problem"),
        [
            ({}, "config.path: Field required"),
            ({"path": "a.csv", "extra": 1}, "config.extra: Extra inputs are not permitted"),
            ({"path": "a.csv", "delimiter": ";;"}, "config.delimiter"),
        ],
    )
    def test_config_is_checked_against_the_type(self, api, catalog, config, problem):
        body = {
            "name": unique("s"),
            "type": "csv",
            "config": config,
            "projectId": catalog.project_id,
        }
        response = api.post("/defined-sources", json=body)
        assert response.status_code == 422
        assert problem in response.text

    def test_a_config_change_must_fit_the_connectors_overrides(self, api, catalog):
        created(
            api.post("/connectors", json=catalog.connector(sourceConfigOverride={"delimiter": ";"}))
        )
        response = api.patch(
            f"/defined-sources/{catalog.source_id}", json={"type": "jsonl", "config": {"path": "x"}}
        )
        assert response.status_code == 422
        assert "delimiter" in response.text
        assert api.get(f"/defined-sources/{catalog.source_id}").json()["type"] == "csv"

    def test_an_endpoint_in_use_is_not_deleted(self, api: httpx.Client, catalog: Catalog):
        connector = created(api.post("/connectors", json=catalog.connector()))
        for path in (
            f"/defined-sources/{catalog.source_id}",
            f"/defined-destinations/{catalog.destination_id}",
        ):
            response = api.delete(path)
            assert response.status_code == 409
            assert f"{connector['id']} ({connector['name']!r})" in response.json()["detail"]
            assert api.get(path).status_code == 200

    def test_an_unknown_project_is_named(self, api: httpx.Client):
        body = {"name": unique("s"), "type": "csv", "config": {"path": "x"}, "projectId": 987654}
        response = api.post("/defined-sources", json=body)
        assert response.status_code == 422
        assert response.json()["detail"][0]["loc"] == ["body", "projectId"]


class TestConnectorList:
    def test_filters_and_pages(self, api: httpx.Client, catalog: Catalog):
        ids = [
            created(api.post("/connectors", json=catalog.connector(isActive=active)))["id"]
            for active in (True, False, True)
        ]
        params = {"projectId": catalog.project_id}
        listed = api.get("/connectors", params=params).json()
        assert ([c["id"] for c in listed["data"]], listed["count"]) == (ids, 3)
        active = api.get("/connectors", params={**params, "isActive": "true"}).json()
        assert [c["id"] for c in active["data"]] == [ids[0], ids[2]]
        page = api.get("/connectors", params={**params, "limit": 1, "offset": 1}).json()
        assert ([c["id"] for c in page["data"]], page["count"]) == ([ids[1]], 3)
        assert api.get("/connectors", params={"limit": 0}).status_code == 422


class TestHealth:
    def test_healthy(self, stack):
        response = httpx.get(f"{stack.api_url}/health")
        assert response.json() == {"database": "ok", "prefect": "ok"}
