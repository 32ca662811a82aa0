"""The `control-plane` command without PREFECT_API_URL: it works on the Prefect server `up`
starts, or says how to point it at one, and never starts a temporary server of Prefect's."""

import os
import secrets
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit
from uuid import UUID

import httpx
from prefect.client.orchestration import SyncPrefectClient

from bench._seed import Catalog, created
from control_plane import deployments
from control_plane.cli import worker_environment
from control_plane.processes import free_port
from control_plane.settings import Settings
from tests.conftest import Stack
from tests.helpers import reconcile_cli

CONTROL_PLANE = str(Path(sys.executable).parent / "control-plane")


def _env_without_api_url(
    env: dict[str, str], prefect_port: int, home: Path
) -> dict[str, str | None]:
    """`env` as a second terminal has it: no PREFECT_API_URL, the port `up` gives its Prefect
    server, and a Prefect home of its own where an ephemeral server would leave its database."""
    home.mkdir(parents=True, exist_ok=True)
    return {
        **env,
        "PREFECT_API_URL": None,
        "PREFECT_HOME": str(home),
        "CONTROL_PLANE_PREFECT_HOST": "127.0.0.1",
        "CONTROL_PLANE_PREFECT_PORT": str(prefect_port),
    }


def _control_plane(env: dict[str, str | None], *args: str) -> subprocess.CompletedProcess[str]:
    merged = {**os.environ, **env}
    return subprocess.run(
        [CONTROL_PLANE, *args],
        env={name: value for name, value in merged.items() if value is not None},
        capture_output=True,
        text=True,
        timeout=60,
    )


def _ephemeral_databases(home: Path) -> list[Path]:
    return sorted(home.rglob("prefect.db*"))


class TestOnTheServerUpStarts:
    def test_reconcile_finds_and_repairs_the_stacks_drift(
        self,
        api: httpx.Client,
        prefect: SyncPrefectClient,
        catalog: Catalog,
        stack: Stack,
        prefect_api_url: str,
        tmp_path: Path,
    ):
        home = tmp_path / "prefect-home"
        env = _env_without_api_url(stack.env, urlsplit(prefect_api_url).port, home)
        connector = created(api.post("/connectors", json=catalog.connector()))
        name = deployments.deployment_name(connector["id"])
        # Whatever earlier tests of the session left behind, then a stack without drift.
        reconcile_cli(env)
        assert reconcile_cli(env, "--dry-run").splitlines()[-1] == "0 found"

        prefect.delete_deployment(UUID(connector["prefectDeploymentId"]))
        found = reconcile_cli(env, "--dry-run").splitlines()
        assert [line.split()[:2] for line in found[:-1]] == [["create", name]], found
        assert found[-1] == "1 found"

        assert reconcile_cli(env).splitlines()[-1] == "1 repaired"
        deployment = prefect.read_deployment_by_name(f"sync-connector/{name}")
        assert deployment.work_pool_name == stack.work_pool
        row = api.get(f"/connectors/{connector['id']}").json()
        assert row["prefectDeploymentId"] == str(deployment.id)
        assert reconcile_cli(env, "--dry-run").splitlines()[-1] == "0 found"
        assert _ephemeral_databases(home) == []


def _checkout(directory: Path) -> dict[str, str]:
    """A checkout's settings with nothing running: its own data dir and SQLite database."""
    return {
        "CONTROL_PLANE_DATA_DIR": str(directory),
        "CONTROL_PLANE_DATABASE_URL": f"sqlite:///{directory / 'control-plane.db'}",
    }


class TestWithoutAServer:
    def test_commands_on_prefect_exit_saying_how_to_point_them(self, tmp_path: Path):
        home = tmp_path / "prefect-home"
        port = free_port()  # nothing listens there
        env = _env_without_api_url(_checkout(tmp_path), port, home)
        for args in (["reconcile"], ["reconcile", "--dry-run"], ["deploy"]):
            done = _control_plane(env, *args)
            assert done.returncode == 1, (args, done.stdout, done.stderr)
            message = done.stderr.strip()
            assert message.startswith(f"no Prefect server answers at http://127.0.0.1:{port}/api")
            assert "make up" in message and "PREFECT_API_URL" in message
            assert "Traceback" not in done.stderr
        assert _ephemeral_databases(home) == []

    def test_commands_that_need_no_prefect_still_run(self, tmp_path: Path):
        home = tmp_path / "prefect-home"
        env = _env_without_api_url(_checkout(tmp_path), free_port(), home)
        env["CONTROL_PLANE_AUTH_JWT_SECRET"] = "a-secret-long-enough-for-hs256-tokens!"
        done = _control_plane(env, "token", "--sub", "cli")
        assert done.returncode == 0, done.stderr
        assert done.stdout.count(".") == 2  # a JWT: header.claims.signature
        done = _control_plane(env, "migrate")
        assert done.returncode == 0, done.stderr
        assert _ephemeral_databases(home) == []


class TestWorkerEnvironment:
    def test_workers_get_every_setting_but_the_apis_auth(self, tmp_path: Path, monkeypatch):
        secret = secrets.token_urlsafe(32)
        settings = Settings(
            data_dir=tmp_path, auth_enabled=True, auth_jwt_secret=secret, allowed_hosts=["db:5432"]
        )
        env = {"CONTROL_PLANE_AUTH_JWT_SECRET": secret, "CONTROL_PLANE_DATA_DIR": str(tmp_path)}

        worker = worker_environment(env, settings)

        assert not [name for name in worker if name.startswith("CONTROL_PLANE_AUTH_")]
        assert secret not in repr(worker)
        # A worker reads no `.env`: what came from it reaches the worker as variables.
        for name, value in worker.items():
            monkeypatch.setenv(name, value)
        seen = Settings(_env_file=None)
        assert (seen.allowed_hosts, seen.data_dir, seen.auth_enabled) == (
            ["db:5432"],
            tmp_path,
            False,
        )
