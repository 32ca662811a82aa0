"""The airbyte source type with a real Airbyte connector, source-faker, installed from PyPI
into a virtualenv of its own, and through a real sync run."""

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prefect.client.orchestration import SyncPrefectClient

from bench._seed import created, unique
from control_plane.connectors import SelectedStream, checks
from control_plane.connectors.airbyte import AirbyteSource, installed
from control_plane.policy import Scope
from control_plane.settings import get_settings
from tests.conftest import AIRBYTE_DIR
from tests.helpers import POSTGRESQL_ONLY, trigger_and_wait

# Five users, the same ones every time; with always_updated off, an incremental read after
# them finds none.
FAKER = {"count": 5, "seed": 1, "parallelism": 1, "always_updated": False}


@pytest.fixture(scope="module", autouse=True)
def faker_installed() -> Iterator[None]:
    """source-faker installed where the stacks' workers look (once: about a minute), before
    any test waits on a run that would otherwise install it."""
    with pytest.MonkeyPatch.context() as environment:
        environment.setenv("CONTROL_PLANE_AIRBYTE_DIR", str(AIRBYTE_DIR))
        get_settings.cache_clear()
        installed("source-faker", None)
        yield
    get_settings.cache_clear()


@pytest.fixture
def scope(tmp_path: Path) -> Scope:
    return Scope(folders=(tmp_path,), allowed=())


def _faker(scope: Scope, **config: Any) -> AirbyteSource:
    settings = {"connector": "source-faker", "config": FAKER, "stream": "users", **config}
    return AirbyteSource.configured(settings, scope)  # type: ignore[return-value]


def _records(source: AirbyteSource, cursor: Any = None) -> list[dict[str, Any]]:
    return [record for batch in source.read(cursor=cursor, batch_size=2) for record in batch]


class TestFaker:
    def test_the_check_passes_and_discovery_lists_its_streams(self, scope: Scope) -> None:
        source = _faker(scope)
        steps, _ = checks.run(
            "source",
            "airbyte",
            source.config.model_dump(by_alias=True),
            scope,
            deadline=time.monotonic() + 300,
        )
        assert [(step.name, step.status) for step in steps] == [
            ("resolve", "passed"),
            ("connect", "passed"),
            ("authenticate", "passed"),
            ("read", "passed"),
        ]
        streams = {stream.name: stream for stream in source.discover()}
        assert {"users", "products", "purchases"} <= set(streams)
        assert streams["users"].primary_key == ["id"]
        assert streams["users"].cursor_candidates == ["updated_at"]

    def test_an_incremental_stream_resumes_from_the_connectors_state(self, scope: Scope) -> None:
        source = _faker(scope).stream(
            SelectedStream(name="users", sync_mode="incremental", cursor_field="updated_at")
        )
        first = _records(source)
        assert sorted(record["id"] for record in first) == [1, 2, 3, 4, 5]
        state = source.position
        assert state is not None and json.dumps(state)

        assert _records(source, cursor=state) == []
        assert [r["id"] for r in _records(_faker(scope))] == [r["id"] for r in first]

    def test_a_failing_connector_says_why(self, scope: Scope) -> None:
        source = _faker(scope, config={**FAKER, "count": -1})
        with pytest.raises(RuntimeError, match="source-faker"):
            _records(source)

    def test_its_error_never_quotes_its_config(self, scope: Scope) -> None:
        secret = f"token-{uuid.uuid4().hex}"
        source = _faker(scope, config={**FAKER, "count": secret})
        with pytest.raises(RuntimeError, match=r"'\*{8}' is not of type 'integer'") as failed:
            _records(source)
        assert secret not in str(failed.value)

    def test_a_connector_the_operator_did_not_list_is_refused(self, scope: Scope) -> None:
        with pytest.raises(ValueError, match="source-postgres is not among the connectors"):
            _faker(scope, connector="source-postgres")


@POSTGRESQL_ONLY
def test_a_sync_run_moves_the_faker_users(api, prefect: SyncPrefectClient, catalog) -> None:
    source = {"connector": "source-faker", "config": FAKER, "stream": "users"}
    source_id = created(
        api.post(
            "/defined-sources",
            json={
                "name": unique("faker"),
                "type": "airbyte",
                "config": source,
                "projectId": catalog.project_id,
            },
        )
    )["id"]
    shown = api.get(f"/defined-sources/{source_id}").json()["config"]["config"]
    assert set(shown.values()) == {"********"}
    connector = created(
        api.post(
            "/connectors",
            json={
                "name": unique("faker"),
                "projectId": catalog.project_id,
                "definedSourceId": source_id,
                "definedDestinationId": catalog.destination_id,
                "schedule": None,
                "streams": [
                    {"name": "users", "syncMode": "incremental", "cursorField": "updated_at"}
                ],
            },
        )
    )
    assert trigger_and_wait(api, prefect, connector["id"]).state.is_completed()
    lines = (catalog.folder / "users.jsonl").read_text().splitlines()
    assert sorted(json.loads(line)["id"] for line in lines) == [1, 2, 3, 4, 5]
    [state] = api.get(f"/connectors/{connector['id']}/state").json()["streams"]
    assert state["stream"] == "users" and state["cursor"] is not None
    assert trigger_and_wait(api, prefect, connector["id"]).state.is_completed()
    assert len((catalog.folder / "users.jsonl").read_text().splitlines()) == 5
