"""The Prefect UI in a real browser: the run form of a control deployment, as a person sees it."""

import asyncio
import shutil
import subprocess

from prefect.client.orchestration import SyncPrefectClient

from control_plane import bootstrap
from control_plane.settings import Settings

TITLES = ("Project ID", "Defined source ID", "Defined destination ID", "Time zone")


def test_the_create_connector_form_shows_titles_a_person_reads(
    prefect: SyncPrefectClient, prefect_api_url: str
):
    chromium = shutil.which("chromium")
    assert chromium, "Chromium is missing: `make test` installs it (apt-get install chromium)"
    asyncio.run(
        bootstrap.deploy_control_flows(
            settings=Settings(reconcile_interval_seconds=0, full_reconcile_interval_seconds=0)
        )
    )
    form = prefect.read_deployment_by_name("create-connector/create-connector")
    url = f"{prefect_api_url.removesuffix('/api')}/deployments/deployment/{form.id}/run"
    # The UI is a single-page app: the virtual time budget lets it render before the dump.
    command = [chromium, "--headless=new", "--no-sandbox", "--disable-gpu"]
    command += ["--disable-dev-shm-usage", "--virtual-time-budget=30000", "--dump-dom", url]
    page = subprocess.run(command, capture_output=True, text=True, timeout=180).stdout

    assert "Can't connect to Server API" not in page
    assert [title for title in TITLES if title not in page] == []
    assert "Projectid" not in page and "Definedsourceid" not in page
