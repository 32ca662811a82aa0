"""A client generated from the live `/openapi.json` with openapi-python-client runs the seed's
lifecycle with `raise_on_unexpected_status=True`: the operations' names, the optional trigger
body and every status the API answered along the way are in the document, errors with their
schema."""

import importlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType, SimpleNamespace

import httpx
import pytest

from bench._seed import Catalog
from tests.conftest import Stack

# `make test` installs it in a virtualenv of its own: it pins httpx and typer below Prefect's.
GENERATOR = Path(__file__).parents[1] / ".venv" / "tools" / "bin" / "openapi-python-client"
PACKAGE = "control_plane_sdk"


@pytest.fixture(scope="module")
def sdk(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModuleType]:
    """The generated client's package, imported from a temp folder."""
    if not GENERATOR.exists():
        pytest.fail(f"{GENERATOR} is missing: `make test` installs it (make .venv/tools/.sdk)")
    folder = tmp_path_factory.mktemp("sdk")
    spec = folder / "openapi.json"
    spec.write_bytes(httpx.get(f"{stack.api_url}/openapi.json", timeout=30).content)
    config = folder / "config.yaml"
    config.write_text(f"package_name_override: {PACKAGE}\npost_hooks: []\n")
    generated = subprocess.run(
        [GENERATOR, "generate", "--path", spec, "--output-path", folder / PACKAGE]
        + ["--config", config, "--meta", "none"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    # Anything the generator could not make sense of is a warning, and a missing piece.
    assert generated.returncode == 0 and "Warning" not in generated.stdout, generated.stdout
    sys.path.insert(0, str(folder))
    try:
        yield importlib.import_module(PACKAGE)
    finally:
        sys.path.remove(str(folder))


def test_the_seed_lifecycle_through_a_generated_client(
    sdk: ModuleType, stack: Stack, catalog: Catalog
) -> None:
    api = SimpleNamespace(
        **{
            name: importlib.import_module(f"{PACKAGE}.api.connectors.{name}")
            for name in ("create_connector", "update_connector", "trigger_connector")
            + ("delete_connector", "read_connector")
        }
    )
    models = importlib.import_module(f"{PACKAGE}.models")
    with sdk.Client(base_url=stack.api_url, raise_on_unexpected_status=True, timeout=60) as client:
        body = models.ConnectorCreate.from_dict(catalog.connector(schedule="0 * * * *"))
        created = api.create_connector.sync_detailed(client=client, body=body)
        assert created.status_code == 201
        connector_id = created.parsed.id

        rescheduled = api.update_connector.sync(
            connector_id, client=client, body=models.ConnectorUpdate(schedule="0 */6 * * *")
        )
        assert rescheduled.schedule == "0 */6 * * *"

        triggered = api.trigger_connector.sync(connector_id, client=client)  # no body
        assert (triggered.status, triggered.flow_run_id is not None) == ("success", True)

        deactivated = api.update_connector.sync(
            connector_id, client=client, body=models.ConnectorUpdate(is_active=False)
        )
        assert deactivated.is_active is False
        refused = api.trigger_connector.sync_detailed(connector_id, client=client)
        assert refused.status_code == 409
        assert "inactive" in refused.parsed.detail

        assert api.delete_connector.sync_detailed(connector_id, client=client).status_code == 204
        gone = api.read_connector.sync_detailed(connector_id, client=client)
        assert gone.status_code == 404
        assert isinstance(gone.parsed, models.ErrorPublic)
        assert str(connector_id) in gone.parsed.detail
