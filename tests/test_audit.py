"""Every attempt is in the audit log, refused ones too (invariant 8): a control action that is
refused is a Failed control run, named for a person and tagged with its actor and, when the id
is known, its connector, like one that worked."""

import uuid

import httpx
import pytest
from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.deployments import run_deployment

from bench._seed import MONTHLY, Catalog, created, unique
from tests.conftest import AuthApi
from tests.helpers import POSTGRESQL_ONLY, control_runs


def _unknown_id() -> int:
    """A connector id that nothing creates, its own per test, so its tag finds only our runs."""
    return 900_000_000 + uuid.uuid4().int % 100_000_000


def _run(name: str, **parameters) -> FlowRun:
    """Run a control deployment as the Prefect UI does, and wait for it to end."""
    return run_deployment(name=f"{name}/{name}", parameters=parameters, timeout=120)


def _refused(prefect: SyncPrefectClient, connector_id: int) -> FlowRun:
    """The one failed control run of the connector."""
    [run] = [r for r in control_runs(prefect, connector_id) if r.state.type == StateType.FAILED]
    return run


def _named(prefect: SyncPrefectClient, name: str) -> FlowRun:
    """The one run of that name."""
    [run] = prefect.read_flow_runs(
        flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[name]))
    )
    return run


def _assert_audited(run: FlowRun, *, name: str, actor: str, connector_id: int | None) -> None:
    assert run.state.type == StateType.FAILED, run.state
    # The person's name, not Prefect's generated adjective-animal one.
    assert run.name == name
    assert {"control-plane", f"actor:{actor}"} <= set(run.tags), run.tags
    connector_tags = {tag for tag in run.tags if tag.startswith("connector:")}
    assert connector_tags == ({f"connector:{connector_id}"} if connector_id else set()), run.tags


@pytest.fixture
def connector(api: httpx.Client, catalog: Catalog) -> dict:
    return created(api.post("/connectors", json=catalog.connector()))


class TestRefusedCreate:
    def test_an_unknown_defined_source_is_a_named_failed_run(
        self, api: httpx.Client, prefect: SyncPrefectClient, catalog: Catalog
    ):
        spec = catalog.connector(definedSourceId=_unknown_id())
        response = api.post("/connectors", json=spec)
        assert response.status_code == 422, response.text
        name = f"create connector {spec['name']!r} in project {catalog.project_id}"
        _assert_audited(_named(prefect, name), name=name, actor="anonymous", connector_id=None)

    def test_a_route_to_no_channel_is_a_named_failed_run(
        self, api: httpx.Client, prefect: SyncPrefectClient, catalog: Catalog
    ):
        """Refused by a check that reads Prefect, before the row exists."""
        route = {"events": ["run-failed"], "channel": "slack-webhook/nowhere"}
        spec = catalog.connector(notifications=[route])
        response = api.post("/connectors", json=spec)
        assert response.status_code == 422, response.text
        name = f"create connector {spec['name']!r} in project {catalog.project_id}"
        _assert_audited(_named(prefect, name), name=name, actor="anonymous", connector_id=None)


class TestStaleIfMatch:
    def test_an_update_is_a_named_failed_run(
        self, api: httpx.Client, prefect: SyncPrefectClient, connector: dict
    ):
        path = f"/connectors/{connector['id']}"
        assert api.patch(path, json={"description": "moved on"}).status_code == 200
        stale = {"If-Match": f'"{connector["version"]}"'}
        response = api.patch(path, json={"schedule": "0 */6 * * *"}, headers=stale)
        assert response.status_code == 412, response.text
        _assert_audited(
            _refused(prefect, connector["id"]),
            name=f"reschedule connector {connector['id']} to 0 */6 * * *",
            actor="anonymous",
            connector_id=connector["id"],
        )

    def test_a_delete_is_a_named_failed_run(
        self, api: httpx.Client, prefect: SyncPrefectClient, connector: dict
    ):
        path = f"/connectors/{connector['id']}"
        assert api.patch(path, json={"description": "moved on"}).status_code == 200
        response = api.delete(path, headers={"If-Match": f'"{connector["version"]}"'})
        assert response.status_code == 412, response.text
        assert api.get(path).status_code == 200
        _assert_audited(
            _refused(prefect, connector["id"]),
            name=f"delete connector {connector['id']}",
            actor="anonymous",
            connector_id=connector["id"],
        )


class TestBadConfig:
    def test_an_update_refused_for_its_override_is_a_named_failed_run(
        self, api: httpx.Client, prefect: SyncPrefectClient, connector: dict
    ):
        response = api.patch(
            f"/connectors/{connector['id']}", json={"sourceConfigOverride": {"path": 5}}
        )
        assert response.status_code == 422, response.text
        _assert_audited(
            _refused(prefect, connector["id"]),
            name=f"update connector {connector['id']}: sourceConfigOverride",
            actor="anonymous",
            connector_id=connector["id"],
        )


class TestInactiveTrigger:
    def test_a_trigger_of_an_inactive_connector_is_a_named_failed_run(
        self, api: httpx.Client, prefect: SyncPrefectClient, catalog: Catalog
    ):
        connector = created(api.post("/connectors", json=catalog.connector(isActive=False)))
        response = api.post(f"/connectors/{connector['id']}/trigger")
        assert response.status_code == 409, response.text
        _assert_audited(
            _refused(prefect, connector["id"]),
            name=f"trigger connector {connector['id']}",
            actor="anonymous",
            connector_id=connector["id"],
        )


class TestMissingConnector:
    def test_the_api_answers_404_before_any_flow_runs(
        self, api: httpx.Client, prefect: SyncPrefectClient
    ):
        connector_id = _unknown_id()
        path = f"/connectors/{connector_id}"
        for method, url in [("PATCH", path), ("DELETE", path), ("POST", f"{path}/trigger")]:
            response = api.request(method, url, json={} if method == "PATCH" else None)
            assert response.status_code == 404, response.text
        # The connector dependency refuses first: there is no attempt of a control flow to log.
        assert control_runs(prefect, connector_id) == []

    @POSTGRESQL_ONLY
    @pytest.mark.usefixtures("control_deployments")
    @pytest.mark.parametrize(
        ("flow", "parameters", "name"),
        [
            ("delete-connector", {}, "delete connector {id}"),
            ("trigger-connector", {}, "trigger connector {id}"),
            ("update-connector", {"changes": {"isActive": False}}, "deactivate connector {id}"),
            ("reset-connector", {}, "reset connector {id}"),
        ],
    )
    def test_from_the_prefect_ui_it_is_a_named_failed_run(
        self, prefect: SyncPrefectClient, flow: str, parameters: dict, name: str
    ):
        connector_id = _unknown_id()
        run = _run(flow, connector_id=connector_id, **parameters)
        assert "does not exist" in run.state.message
        _assert_audited(
            prefect.read_flow_run(run.id),
            name=name.format(id=connector_id),
            actor="prefect-ui",
            connector_id=connector_id,
        )

    @pytest.mark.usefixtures("control_deployments")
    def test_the_automation_deactivating_a_deleted_connector_is_a_named_failed_run(
        self, prefect: SyncPrefectClient
    ):
        # As auto-deactivate-failing-connectors asks, for a connector deleted in between.
        connector_id, reason = _unknown_id(), "3 consecutive failed runs, last: boom"
        run = _run(
            "deactivate-connector",
            connector_id=connector_id,
            reason=reason,
            only_if_failing=True,
            actor="automation",
        )
        _assert_audited(
            prefect.read_flow_run(run.id),
            name=f"deactivate connector {connector_id}: {reason}",
            actor="automation",
            connector_id=connector_id,
        )


@pytest.mark.usefixtures("control_deployments")
class TestInvalidParameters:
    """Runs whose parameters Prefect's engine refuses before the flow's body runs."""

    def test_an_update_is_named_and_tagged_from_its_raw_parameters(
        self, api: httpx.Client, prefect: SyncPrefectClient, connector: dict
    ):
        run = _run(
            "update-connector",
            connector_id=connector["id"],
            changes={"schedule": "every morning"},
            actor="ops-oncall",
        )
        assert "schedule" in run.state.message
        _assert_audited(
            prefect.read_flow_run(run.id),
            name=f"update connector {connector['id']}: invalid parameters",
            actor="ops-oncall",
            connector_id=connector["id"],
        )
        assert api.get(f"/connectors/{connector['id']}").json()["schedule"] == MONTHLY

    def test_a_create_takes_the_ui_actor(self, prefect: SyncPrefectClient, catalog: Catalog):
        run = _run("create-connector", spec=catalog.connector(timezone="Mars/Olympus_Mons"))
        assert "timezone" in run.state.message
        _assert_audited(
            prefect.read_flow_run(run.id),
            name="create connector: invalid parameters",
            actor="prefect-ui",
            connector_id=None,
        )


class TestWithAuth:
    def test_a_refused_attempt_is_the_token_subjects(
        self, auth_api: AuthApi, prefect: SyncPrefectClient, catalog: Catalog
    ):
        actor = unique("auditor")
        with auth_api.client(auth_api.token(sub=actor)) as client:
            connector = created(client.post("/connectors", json=catalog.connector()))
            response = client.patch(
                f"/connectors/{connector['id']}",
                json={"isActive": False, "name": unique("renamed")},
                headers={"If-Match": f'"{connector["version"] + 1}"'},
            )
        assert response.status_code == 412, response.text
        _assert_audited(
            _refused(prefect, connector["id"]),
            name=f"deactivate connector {connector['id']} and update name",
            actor=actor,
            connector_id=connector["id"],
        )
