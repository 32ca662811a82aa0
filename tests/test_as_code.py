"""Connectors as code: `control-plane plan`, `apply` and `export` run as a CI job would run
them, against the stack's API over HTTP, with the token and the secrets in the environment."""

import io
import json
import os
import secrets
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from uuid import UUID

import httpx
import pytest
import yaml
from prefect.client.orchestration import SyncPrefectClient

from bench._seed import MONTHLY, unique
from control_plane.cli import main
from control_plane.settings import get_settings
from tests.conftest import PUBLIC_TEST_HOST, AuthApi, Stack
from tests.helpers import control_runs

CONTROL_PLANE = str(Path(sys.executable).parent / "control-plane")


class Cli:
    """`control-plane` in a folder of its own (no `.env` of the repo's), aimed at one API.

    Run in this process (`cli.main`, its settings read again from the environment given),
    which spares each command Prefect's 2 s of imports; `test_the_installed_command_...` runs
    the installed one.
    """

    def __init__(self, folder: Path, api_url: str, token: str | None = None) -> None:
        self.folder, self.env = folder, {"CONTROL_PLANE_API_URL": api_url}
        if token:
            self.env["CONTROL_PLANE_API_TOKEN"] = token

    def __call__(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        out, err = io.StringIO(), io.StringIO()
        with pytest.MonkeyPatch.context() as patch:
            for name, value in {**self.env, **env}.items():
                patch.setenv(name, value)
            patch.chdir(self.folder)
            get_settings.cache_clear()
            try:
                with redirect_stdout(out), redirect_stderr(err):
                    main(list(args))
                status = 0
            except SystemExit as exit_:
                status = exit_.code if isinstance(exit_.code, int) else 1
            finally:
                get_settings.cache_clear()
        return subprocess.CompletedProcess(args, status, out.getvalue(), err.getvalue())

    def json(self, *args: str, expect: int, **env: str) -> dict:
        done = self(*args, "--json", **env)
        assert done.returncode == expect, done.stdout + done.stderr
        return json.loads(done.stdout)


NEXT_MONTHLY = "0 4 1 * *"  # the schedule a changed file moves to


def _file(project: str, *, schedule: str = MONTHLY, connectors: int = 1, **extra) -> dict:
    """A project with an http source whose header is a secret, a JSONL destination and
    `connectors` connectors between them."""
    return {
        "projects": [
            {
                "name": project,
                "description": "orders for finance",
                "sources": [
                    {
                        "name": "orders-api",
                        "type": "http",
                        "config": {
                            "url": f"http://{PUBLIC_TEST_HOST}:9/orders",
                            "headers": {"Authorization": "${ORDERS_AUTH}"},
                        },
                    }
                ],
                "destinations": [
                    {"name": "lake", "type": "jsonl", "config": {"path": "orders.jsonl"}}
                ],
                "connectors": [
                    {
                        "name": f"orders-{n}",
                        "source": "orders-api",
                        "destination": "lake",
                        "schedule": schedule,
                        **extra,
                    }
                    for n in range(connectors)
                ],
            }
        ]
    }


def _write(path: Path, content: dict) -> Path:
    path.write_text(yaml.safe_dump(content, sort_keys=False))
    return path


def _project(api: httpx.Client, name: str) -> dict | None:
    return next((p for p in api.get("/projects", params={"limit": 1000}).json()["data"]
                 if p["name"] == name), None)  # fmt: skip


def _connectors(api: httpx.Client, project_id: int) -> dict[str, dict]:
    found = api.get("/connectors", params={"projectId": project_id}).json()["data"]
    return {connector["name"]: connector for connector in found}


def _titles(planned: dict) -> list[tuple[str, str, str]]:
    return [(step["action"], step["kind"], step["name"]) for step in planned["steps"]]


class TestPlanAndApply:
    def test_a_file_applied_from_nothing_then_changed_then_exported(
        self, auth_api: AuthApi, prefect: SyncPrefectClient, tmp_path: Path
    ):
        token = auth_api.token(sub="ci-pipeline")
        with auth_api.client(token) as api:
            cli = Cli(tmp_path, auth_api.url, token)
            name, secret = unique("as-code"), f"Bearer {secrets.token_urlsafe(16)}"
            path = _write(tmp_path / "connectors.yaml", _file(name))

            planned = cli.json("plan", "-f", str(path), expect=2, ORDERS_AUTH=secret)
            assert _titles(planned) == [
                ("create", "project", name),
                ("create", "source", "orders-api"),
                ("create", "destination", "lake"),
                ("create", "connector", "orders-0"),
            ]
            assert planned["summary"] == {"create": 4, "update": 0, "delete": 0, "drift": 0}
            assert secret not in json.dumps(planned)
            assert _project(api, name) is None, "a plan changes nothing"

            applied = cli.json("apply", "-f", str(path), expect=0, ORDERS_AUTH=secret)
            assert len(applied["applied"]) == 4 and applied["failed"] is None
            project = _project(api, name)
            assert project is not None
            connector = _connectors(api, project["id"])["orders-0"]
            assert connector["isActive"] and connector["prefectDeploymentId"]
            [create] = control_runs(prefect, connector["id"])
            assert "actor:ci-pipeline" in create.tags, "each change is audited as the token's sub"

            again = cli.json("apply", "-f", str(path), expect=0, ORDERS_AUTH=secret)
            assert again["applied"] == [] and again["plan"]["steps"] == []
            done = cli("plan", "-f", str(path), ORDERS_AUTH=secret)
            assert done.returncode == 0, done.stdout + done.stderr
            assert "No changes" in done.stdout

            rotated = f"Bearer {secrets.token_urlsafe(16)}"
            _write(path, _file(name, schedule=NEXT_MONTHLY))
            text = cli("plan", "-f", str(path), ORDERS_AUTH=rotated)
            assert text.returncode == 2, text.stdout + text.stderr
            assert "~ connector" in text.stdout
            assert f'"{MONTHLY}" -> "{NEXT_MONTHLY}"' in text.stdout
            assert "config: a secret changed (masked)" in text.stdout and rotated not in text.stdout
            planned = cli.json("plan", "-f", str(path), expect=2, ORDERS_AUTH=rotated)
            assert _titles(planned) == [
                ("update", "source", "orders-api"),
                ("update", "connector", "orders-0"),
            ]
            [_, schedule] = planned["steps"]
            assert [c["field"] for c in schedule["changes"]] == ["schedule", "version"]
            assert schedule["deployment"]["action"] == "update"
            cli.json("apply", "-f", str(path), expect=0, ORDERS_AUTH=rotated)
            assert _connectors(api, project["id"])["orders-0"]["schedule"] == NEXT_MONTHLY

            exported = tmp_path / "exported.yaml"
            done = cli("export", "--project", name, "-o", str(exported))
            assert done.returncode == 0, done.stderr
            assert rotated not in exported.read_text()
            assert yaml.safe_load(exported.read_text())["projects"][0]["connectors"] == [
                {
                    "name": "orders-0",
                    "source": "orders-api",
                    "destination": "lake",
                    "schedule": NEXT_MONTHLY,
                }
            ]
            # The mask export writes keeps the stored secret: no variable needed, nothing to do.
            assert cli.json("plan", "-f", str(exported), expect=0)["steps"] == []

    def test_plan_shows_drift_in_prefect_and_prune_deletes_what_the_file_lacks(
        self, stack: Stack, api: httpx.Client, prefect: SyncPrefectClient, tmp_path: Path
    ):
        cli, name = Cli(tmp_path, stack.api_url), unique("as-code")
        env = {"ORDERS_AUTH": "Bearer x"}
        path = _write(tmp_path / "connectors.yaml", _file(name, connectors=2))
        cli.json("apply", "-f", str(path), expect=0, **env)
        project = _project(api, name)
        assert project is not None
        kept, dropped = (_connectors(api, project["id"])[f"orders-{n}"] for n in (0, 1))

        prefect.delete_deployment(UUID(kept["prefectDeploymentId"]))
        planned = cli.json("plan", "-f", str(path), expect=2, **env)
        assert planned["steps"] == []
        [drift] = planned["drift"]
        assert (drift["name"], drift["action"]) == ("orders-0", "create")
        assert "Prefect drifted" in cli("plan", "-f", str(path), **env).stdout

        _write(path, _file(name, connectors=1))
        planned = cli.json("plan", "-f", str(path), expect=2, **env)
        assert planned["steps"] == [] and planned["notInFile"] == [f"connector {name}/orders-1"]
        planned = cli.json("plan", "-f", str(path), "--prune", expect=2, **env)
        assert _titles(planned) == [("delete", "connector", "orders-1")]
        assert planned["steps"][0]["deployment"]["action"] == "delete"
        cli.json("apply", "-f", str(path), "--prune", expect=0, **env)
        assert set(_connectors(api, project["id"])) == {"orders-0"}
        assert api.get(f"/connectors/{dropped['id']}").status_code == 404

    def test_apply_stops_at_the_first_refusal_and_says_what_was_done(
        self, stack: Stack, api: httpx.Client, tmp_path: Path
    ):
        cli, name = Cli(tmp_path, stack.api_url), unique("as-code")
        content = _file(name, connectors=3)
        # Only the API knows the type's fields: the file reads, the API refuses it.
        content["projects"][0]["connectors"][1]["sourceConfigOverride"] = {"colour": "blue"}
        path = _write(tmp_path / "connectors.yaml", content)

        done = cli("apply", "-f", str(path), ORDERS_AUTH="Bearer x")
        assert done.returncode == 1, done.stdout + done.stderr
        assert f"applied: create connector {name}/orders-0" in done.stdout
        assert f"failed: create connector {name}/orders-1" in done.stderr
        assert "sourceConfigOverride.colour" in done.stderr
        assert f"not applied: create connector {name}/orders-2" in done.stderr
        project = _project(api, name)
        assert project is not None
        assert set(_connectors(api, project["id"])) == {"orders-0"}

        del content["projects"][0]["connectors"][1]["sourceConfigOverride"]
        applied = cli.json(
            "apply", "-f", str(_write(path, content)), expect=0, ORDERS_AUTH="Bearer x"
        )
        assert applied["applied"] == [
            f"create connector {name}/orders-1",
            f"create connector {name}/orders-2",
        ]


BAD_FILES = [
    ("projects: [name: x", "not YAML"),
    ("projects: &a [*a]\n", ":1: projects[0]: aliases (*name) are not supported"),
    (
        "projects:\n  - name: p\n    description: 2024-01-01\n",
        ":3: projects[0].description: a date",
    ),
    ("projects:\n  - name: p\n    colour: blue\n", ":3: projects[0].colour: unknown field"),
    (
        "projects:\n  - name: p\n    destinations:\n      - name: d\n        type: jsonl\n"
        "        config: {path: out.jsonl, colour: blue}\n",
        ":6: projects[0].destinations[0].config.colour: Extra inputs are not permitted",
    ),
    (
        "projects:\n  - name: p\n    destinations:\n      - {name: d, type: ftp, config: {}}\n",
        ":4: projects[0].destinations[0].type: unknown destination type 'ftp'; "
        "known: dlt, jsonl, sql",
    ),
    (
        "projects:\n  - name: p\n    destinations:\n      - {name: d, type: jsonl, config: {}}\n"
        "    connectors:\n      - {name: c, source: s, destination: d}\n",
        ":6: projects[0].connectors[0].source: project 'p' of this file has no source named 's'",
    ),
    (
        "projects:\n  - name: p\n    sources:\n      - name: s\n        type: sql\n"
        "        config: {url: 'postgresql://app:hunter2@127.0.0.1:5432/test', table: t}\n",
        ":6: projects[0].sources[0].config.url: a secret in clear",
    ),
    (
        "projects:\n  - name: p\n    sources:\n      - name: s\n        type: http\n"
        "        config: {url: 'http://127.0.0.2/x', headers: {A: '${NOT_SET_ANYWHERE}'}}\n",
        "the environment variable NOT_SET_ANYWHERE is not set",
    ),
]


@pytest.mark.parametrize(("content", "message"), BAD_FILES)
def test_a_bad_file_is_refused_with_its_line_and_nothing_is_asked(
    tmp_path: Path, content: str, message: str
):
    # No API answers here: a bad file must fail before any call.
    cli = Cli(tmp_path, "http://127.0.0.1:9")
    path = tmp_path / "connectors.yaml"
    path.write_text(content)
    for command in ("plan", "apply"):
        done = cli(command, "-f", str(path))
        assert done.returncode == 1, done.stdout + done.stderr
        assert str(path) in done.stderr and message in done.stderr, done.stderr
        assert "Traceback" not in done.stderr
        [error] = [
            e for e in cli.json(command, "-f", str(path), expect=1)["errors"] if message in e
        ]
        assert error.startswith(str(path))


def test_the_installed_command_tells_a_bad_file_with_exit_status_1(tmp_path: Path):
    path = tmp_path / "connectors.yaml"
    path.write_text("projects:\n  - name: p\n    colour: blue\n")
    done = subprocess.run(
        [CONTROL_PLANE, "plan", "-f", str(path)],
        cwd=tmp_path,
        env={**os.environ, "CONTROL_PLANE_API_URL": "http://127.0.0.1:9"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"{path}:3: projects[0].colour: unknown field" in done.stderr
