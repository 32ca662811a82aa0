"""Requests that are safe to retry: Idempotency-Key replays the first answer, and If-Match
refuses a change based on an old version of the connector."""

import uuid

import httpx
from sqlalchemy import create_engine, text

from bench._seed import Catalog, created
from tests.helpers import control_runs


def _key() -> dict[str, str]:
    return {"Idempotency-Key": str(uuid.uuid4())}


class TestIdempotencyKey:
    def test_a_retried_create_gets_the_first_answer_and_creates_once(
        self, api: httpx.Client, prefect, catalog: Catalog
    ):
        body, key = catalog.connector(), _key()
        first = api.post("/connectors", json=body, headers=key)
        again = api.post("/connectors", json=body, headers=key)
        assert (first.status_code, again.status_code) == (201, 201)
        assert again.json() == first.json()
        listed = api.get("/connectors", params={"projectId": catalog.project_id}).json()
        assert listed["count"] == 1
        assert len(control_runs(prefect, first.json()["id"])) == 1

    def test_the_same_key_with_another_body_is_refused(self, api: httpx.Client, catalog):
        key = _key()
        created(api.post("/connectors", json=catalog.connector(), headers=key))
        response = api.post("/connectors", json=catalog.connector(), headers=key)
        assert response.status_code == 422
        assert response.json()["detail"][0]["loc"] == ["body", "Idempotency-Key"]
        listed = api.get("/connectors", params={"projectId": catalog.project_id}).json()
        assert listed["count"] == 1

    def test_a_retried_trigger_starts_one_run_until_the_key_expires(
        self, api: httpx.Client, catalog: Catalog, stack
    ):
        connector = created(api.post("/connectors", json=catalog.connector(schedule=None)))
        path, key = f"/connectors/{connector['id']}/trigger", _key()
        first = api.post(path, headers=key).json()["flowRunId"]
        assert api.post(path, headers=key).json()["flowRunId"] == first
        # A day later the key is forgotten: the same request acts again.
        engine = create_engine(stack.database_url)
        with engine.begin() as db:
            db.execute(
                text(
                    "UPDATE idempotency_key SET created_at = :old WHERE key = :key",
                ),
                {"old": "2000-01-01 00:00:00", "key": key["Idempotency-Key"]},
            )
        engine.dispose()
        assert api.post(path, headers=key).json()["flowRunId"] != first

    def test_a_failed_request_does_not_hold_its_key(self, api: httpx.Client, catalog):
        key = _key()
        bad = catalog.connector(definedSourceId=987654)
        assert api.post("/connectors", json=bad, headers=key).status_code == 422
        assert api.post("/connectors", json=bad, headers=key).status_code == 422


class TestIfMatch:
    def test_a_change_based_on_an_old_version_is_412_and_changes_nothing(
        self, api: httpx.Client, catalog: Catalog
    ):
        response = api.post("/connectors", json=catalog.connector())
        path, etag = f"/connectors/{response.json()['id']}", response.headers["ETag"]
        assert api.get(path).headers["ETag"] == etag

        changed = api.patch(path, json={"description": "one"}, headers={"If-Match": etag})
        assert changed.status_code == 200, changed.text
        new_etag = changed.headers["ETag"]
        assert new_etag != etag

        stale = api.patch(path, json={"description": "two"}, headers={"If-Match": etag})
        assert stale.status_code == 412
        assert api.get(path).json()["description"] == "one"
        assert api.delete(path, headers={"If-Match": etag}).status_code == 412
        assert api.get(path).status_code == 200
        assert api.delete(path, headers={"If-Match": new_etag}).status_code == 204

    def test_without_if_match_the_last_writer_wins(self, api: httpx.Client, catalog: Catalog):
        path = f"/connectors/{created(api.post('/connectors', json=catalog.connector()))['id']}"
        assert api.patch(path, json={"description": "a"}).status_code == 200
        assert api.patch(path, json={"description": "b"}).json()["description"] == "b"
