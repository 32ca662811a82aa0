"""The sync-connector flow ends Cancelled, with the reason, for a connector that is gone or off."""

from uuid import UUID

import pytest
from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.objects import StateType
from sqlalchemy import create_engine, text

from bench._seed import Catalog, created
from tests.helpers import wait_final


def _run_deployment(prefect: SyncPrefectClient, deployment_id: str):
    run = prefect.create_flow_run_from_deployment(UUID(deployment_id))
    return wait_final(prefect, run.id)


class TestSyncCancelsStaleRuns:
    # Drift made on purpose, behind the API's back: the row changes, the deployment stays.
    @pytest.mark.parametrize(
        ("statement", "reason"),
        [
            ("UPDATE connector SET is_active = false WHERE id = :id", "is inactive"),
            ("DELETE FROM connector WHERE id = :id", "does not exist"),
        ],
    )
    def test_cancels_with_the_reason(
        self, api, prefect: SyncPrefectClient, catalog: Catalog, stack, statement, reason
    ):
        connector = created(api.post("/connectors", json=catalog.connector(schedule=None)))
        engine = create_engine(stack.database_url)
        with engine.begin() as db:
            db.execute(text(statement), {"id": connector["id"]})
        engine.dispose()
        run = _run_deployment(prefect, connector["prefectDeploymentId"])
        assert run.state.type == StateType.CANCELLED
        assert f"connector {connector['id']} {reason}" in run.state.message
