"""The trust boundary, attacked as a tenant would: a token scoped to one project tries to reach
files, databases and services beyond it through the data plane, against a real stack with auth
on. Each attack is refused when saved (422 naming the field and the rule), and the same config
written straight into the database fails the run before anything is read or written."""

import json
import secrets
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import httpx
import pytest
from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.objects import StateType
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DatabaseError

from bench._seed import Catalog, created, make_catalog, unique
from control_plane.connectors.builtin import SqlSource
from control_plane.encryption import encrypt_json
from control_plane.policy import Refused, Scope, scope_for
from control_plane.processes import free_port
from control_plane.settings import Settings
from tests.conftest import PUBLIC_TEST_HOST, AuthApi, Stack
from tests.helpers import trigger_and_wait

MASK = "********"
OUTSIDE = "outside the project's folder"
NOT_ALLOWED = "CONTROL_PLANE_ALLOWED_HOSTS"


@dataclass
class Tenant:
    """A project of its own, and a client whose token reaches only that project."""

    client: httpx.Client
    catalog: Catalog

    def source(self, type_: str, config: dict) -> httpx.Response:
        body = {"name": unique("src"), "type": type_, "config": config}
        return self.client.post("/defined-sources", json={**body, "projectId": self.project_id})

    def destination(self, type_: str, config: dict) -> httpx.Response:
        body = {"name": unique("dst"), "type": type_, "config": config}
        return self.client.post(
            "/defined-destinations", json={**body, "projectId": self.project_id}
        )

    @property
    def project_id(self) -> int:
        return self.catalog.project_id


@pytest.fixture
def tenant(auth_api: AuthApi, stack: Stack) -> Iterator[Tenant]:
    with auth_api.client(auth_api.token()) as admin:
        catalog = make_catalog(admin, stack.files)
    token = auth_api.token(sub=unique("tenant"), projects=[catalog.project_id])
    with auth_api.client(token) as client:
        yield Tenant(client, catalog)


def refused(response: httpx.Response, field: str, rule: str) -> str:
    """The message of a 422 that names `field` and says `rule`."""
    assert response.status_code == 422, response.text
    [error] = response.json()["detail"]
    assert error["loc"][:2] == ["body", field], error
    assert rule in error["msg"], error["msg"]
    return error["msg"]


class TestFiles:
    @pytest.mark.parametrize(
        "path",
        [
            "/etc/passwd",
            "../../../../../../etc/passwd",
            str(Path.cwd() / ".env"),
            str(Path.cwd() / "pyproject.toml"),
            "/root/.bashrc",
        ],
    )
    def test_a_path_outside_the_folder_is_refused(self, tenant: Tenant, path: str):
        refused(tenant.source("csv", {"path": path, "delimiter": ":"}), "config", OUTSIDE)
        refused(tenant.source("jsonl", {"path": path}), "config", OUTSIDE)
        refused(tenant.destination("jsonl", {"path": path}), "config", OUTSIDE)

    def test_the_stacks_own_files_are_refused(self, tenant: Tenant, stack: Stack):
        home = Path(stack.env["CONTROL_PLANE_DATA_DIR"])
        for path in (home, home / "prefect.db", home / "secret.key", home / "files"):
            refused(tenant.source("csv", {"path": str(path)}), "config", OUTSIDE)
        refused(tenant.source("csv", {"path": "../*.csv"}), "config", OUTSIDE)
        refused(tenant.source("csv", {"path": "*/../../x.csv"}), "config", "`..`")

    def test_another_projects_folder_is_refused_also_through_a_symlink(
        self, tenant: Tenant, auth_api: AuthApi, stack: Stack
    ):
        with auth_api.client(auth_api.token()) as admin:
            other = make_catalog(admin, stack.files)
        (tenant.catalog.folder / "theirs").symlink_to(other.folder)
        (tenant.catalog.folder / "pw.csv").symlink_to("/etc/passwd")
        for path in (
            f"../{other.project_id}/in.csv",
            str(other.folder / "in.csv"),
            "theirs/in.csv",
            "theirs/*.csv",
            "pw.csv",
        ):
            refused(tenant.source("csv", {"path": path}), "config", OUTSIDE)
        mine = created(tenant.source("csv", {"path": "sub/../in.csv"}))
        assert mine["config"]["path"] == "sub/../in.csv"  # stored as written

    def test_an_override_outside_the_folder_is_refused_and_nothing_changes(self, tenant: Tenant):
        client, catalog = tenant.client, tenant.catalog
        response = client.post(
            "/connectors", json=catalog.connector(sourceConfigOverride={"path": "/etc/passwd"})
        )
        refused(response, "sourceConfigOverride", OUTSIDE)
        connector = created(client.post("/connectors", json=catalog.connector()))
        path = f"/connectors/{connector['id']}"
        patch = {"destinationConfigOverride": {"path": "/root/.bashrc"}}
        refused(client.patch(path, json=patch), "destinationConfigOverride", OUTSIDE)
        after = client.get(path).json()
        assert (after["version"], after["destinationConfigOverride"]) == (connector["version"], {})
        source = f"/defined-sources/{catalog.source_id}"
        refused(client.patch(source, json={"config": {"path": "/etc"}}), "config", OUTSIDE)
        assert client.get(source).json()["config"] == {"path": "in.csv"}

    def test_a_symlink_swapped_in_after_saving_fails_the_run_before_reading(
        self, tenant: Tenant, prefect: SyncPrefectClient
    ):
        folder = tenant.catalog.folder
        (folder / "swap.csv").write_text("id\n1\n")
        source = created(tenant.source("csv", {"path": "swap.csv", "delimiter": ":"}))
        connector = created(
            tenant.client.post(
                "/connectors", json=tenant.catalog.connector(definedSourceId=source["id"])
            )
        )
        (folder / "swap.csv").unlink()
        (folder / "swap.csv").symlink_to("/etc/passwd")
        error = _failed_run(tenant, prefect, connector["id"])
        assert OUTSIDE in error
        assert not (folder / "out.jsonl").exists()


API_KEY = "X-Api-Key"


@dataclass
class Served:
    """A test HTTP API: its base URL, and each request it got with the API key it was sent."""

    url: str
    requests: list[tuple[str, str | None]]


class _Server(BaseHTTPRequestHandler):
    """Answers with a page of records, its `next` the query's `next`, or with a redirect to the
    query's `to`; with a `key` in the query, only requests that send it as the API key."""

    requests: list[tuple[str, str | None]]

    def do_GET(self) -> None:
        self.requests.append((self.path, self.headers.get(API_KEY)))
        query = dict(parse_qsl(urlsplit(self.path).query))
        if "key" in query and self.headers.get(API_KEY) != query["key"]:
            self.send_response(401)
            self.end_headers()
            return
        if "to" in query:
            self.send_response(302)
            self.send_header("Location", query["to"])
            self.end_headers()
            return
        body = {"items": [{"page": self.path}], "next": query.get("next")}
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(json.dumps(body).encode())

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def serve() -> Iterator[Callable[[str], Served]]:
    """Starts test HTTP APIs on a host (the allowed 127.0.0.2, or 127.0.0.1 as an internal
    service that must never be reached); they stop after the test."""
    started: list[ThreadingHTTPServer] = []

    def start(host: str) -> Served:
        requests: list[tuple[str, str | None]] = []
        # A port free on 127.0.0.1 too: a scope refuses any loopback address on the port of
        # Prefect's API or ours, and 127.0.0.2 could be given the one Prefect has on 127.0.0.1.
        handler = type("Handler", (_Server,), {"requests": requests})
        server = ThreadingHTTPServer((host, free_port()), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        started.append(server)
        return Served(f"http://{host}:{server.server_address[1]}", requests)

    yield start
    for server in started:
        server.shutdown()
        server.server_close()


def _connector_reading(tenant: Tenant, config: dict) -> dict:
    source = created(
        tenant.source("http", {"recordsPath": "items", "nextPagePath": "next", **config})
    )
    return created(
        tenant.client.post(
            "/connectors", json=tenant.catalog.connector(definedSourceId=source["id"])
        )
    )


class TestHttp:
    def test_our_own_services_and_private_addresses_are_refused(
        self, tenant: Tenant, stack: Stack, prefect_api_url: str, auth_api: AuthApi
    ):
        for url in (
            f"{prefect_api_url}/block_types/slug/secret/block_documents?include_secrets=true",
            f"{prefect_api_url.replace('127.0.0.1', 'localhost')}/health",
            f"{stack.api_url}/api/v1/defined-sources",
            f"{auth_api.url}/api/v1/defined-sources",
            "http://169.254.169.254/latest/meta-data/",
            "http://10.0.0.1/",
            "http://2130706433/",  # 127.0.0.1 as one number
            "http://0x7f.1/",
            "http://[::1]:4200/api/health",
            "http://[::ffff:127.0.0.1]/",
            "http://[64:ff9b::a00:1]/",  # NAT64 of 10.0.0.1
            "http://0.0.0.0:5432/",
        ):
            refused(tenant.source("http", {"url": url}), "config", "")

    def test_an_open_and_a_closed_port_are_refused_alike(self, tenant: Tenant, serve):
        internal = serve("127.0.0.1")
        closed = f"http://127.0.0.1:{free_port()}"
        open_, shut = (
            refused(tenant.source("http", {"url": f"{base}/x"}), "config", NOT_ALLOWED)
            for base in (internal.url, closed)
        )
        assert open_ == shut  # nothing in the answer tells an open port from a closed one
        assert internal.requests == []

    @pytest.mark.parametrize("how", ["next page", "redirect"])
    def test_a_run_never_follows_to_a_refused_host(
        self, tenant: Tenant, prefect: SyncPrefectClient, serve, how: str
    ):
        public, internal = serve(PUBLIC_TEST_HOST), serve("127.0.0.1")
        query = "next" if how == "next page" else "to"
        connector = _connector_reading(
            tenant, {"url": f"{public.url}/first?{query}={internal.url}/secret"}
        )

        error = _failed_run(tenant, prefect, connector["id"])

        assert "127.0.0.1 is a loopback address" in error, error
        assert internal.requests == []
        assert not (tenant.catalog.folder / "out.jsonl").exists()

    @pytest.mark.parametrize("how", ["next page", "redirect"])
    def test_the_headers_go_only_to_the_urls_origin(
        self, tenant: Tenant, prefect: SyncPrefectClient, serve, how: str
    ):
        home, elsewhere = serve(PUBLIC_TEST_HOST), serve(PUBLIC_TEST_HOST)
        key = secrets.token_hex(8)
        query = "next" if how == "next page" else "to"
        connector = _connector_reading(
            tenant,
            {
                "url": f"{home.url}/first?key={key}&{query}={elsewhere.url}/x",
                "headers": {API_KEY: key},
            },
        )

        assert trigger_and_wait(tenant.client, prefect, connector["id"]).state.is_completed()

        assert [sent for _, sent in home.requests] == [key]
        assert [sent for _, sent in elsewhere.requests] == [None]

    def test_a_host_header_is_refused(self, tenant: Tenant, serve):
        public = serve(PUBLIC_TEST_HOST)
        config = {"url": public.url, "headers": {"host": "prefect.internal"}}
        refused(tenant.source("http", config), "config", "Host")


class TestMaskedSecrets:
    def test_a_config_sent_back_masked_keeps_every_secret(
        self, tenant: Tenant, prefect: SyncPrefectClient, serve
    ):
        public = serve(PUBLIC_TEST_HOST)
        key = secrets.token_hex(8)
        config = {"url": f"{public.url}/first?key={key}&api_key={key}", "headers": {API_KEY: key}}
        connector = _connector_reading(tenant, config)
        source = f"/defined-sources/{connector['definedSourceId']}"
        shown = tenant.client.get(source).json()["config"]
        assert key not in repr(shown) and shown["headers"] == {API_KEY: MASK}

        assert tenant.client.patch(source, json={"config": shown}).status_code == 200

        assert trigger_and_wait(tenant.client, prefect, connector["id"]).state.is_completed()

    def test_a_masked_secret_is_not_handed_to_a_new_host(self, tenant: Tenant, serve):
        public, other = serve(PUBLIC_TEST_HOST), serve(PUBLIC_TEST_HOST)
        config = {"url": f"{public.url}/x", "headers": {API_KEY: secrets.token_hex(8)}}
        source = created(tenant.source("http", config))
        moved = {"url": f"{other.url}/x", "headers": {API_KEY: MASK}}
        response = tenant.client.patch(f"/defined-sources/{source['id']}", json={"config": moved})
        refused(response, "config", "send this secret again")
        assert (
            tenant.client.get(f"/defined-sources/{source['id']}").json()["config"]["url"]
            == config["url"]
        )

    def test_a_mask_with_no_secret_stored_behind_it_is_refused(self, tenant: Tenant, serve):
        public = serve(PUBLIC_TEST_HOST)
        source = created(tenant.source("http", {"url": f"{public.url}/x"}))
        added = {"url": f"{public.url}/x", "headers": {API_KEY: MASK}}
        response = tenant.client.patch(f"/defined-sources/{source['id']}", json={"config": added})
        refused(response, "config", f"none is stored for {API_KEY}")
        stored = tenant.client.get(f"/defined-sources/{source['id']}").json()["config"]
        assert stored == source["config"]

    def test_a_connector_moving_to_another_source_sends_its_secrets_again(
        self, tenant: Tenant, serve
    ):
        public, other = serve(PUBLIC_TEST_HOST), serve(PUBLIC_TEST_HOST)
        key = secrets.token_hex(8)
        connector = _connector_reading(tenant, {"url": f"{public.url}/x"})
        path = f"/connectors/{connector['id']}"
        override = {"headers": {API_KEY: key}}
        response = tenant.client.patch(path, json={"sourceConfigOverride": override})
        assert response.status_code == 200, response.text
        moved = created(tenant.source("http", {"url": f"{other.url}/x"}))["id"]

        for change in ({}, {"sourceConfigOverride": {"headers": {API_KEY: MASK}}}):
            response = tenant.client.patch(path, json={"definedSourceId": moved, **change})
            refused(response, "sourceConfigOverride", "moves to another defined source")
        assert tenant.client.get(path).json()["definedSourceId"] == connector["definedSourceId"]

        again = {"definedSourceId": moved, "sourceConfigOverride": override}
        assert tenant.client.patch(path, json=again).status_code == 200


class TestDatabases:
    def test_the_control_planes_database_is_refused_in_every_spelling(
        self, tenant: Tenant, stack: Stack
    ):
        own = make_url(stack.database_url)
        if own.get_backend_name() == "sqlite":
            link = tenant.catalog.folder / "db.sqlite"
            link.symlink_to(own.database)
            spellings = [f"sqlite:///{own.database}", "sqlite:///db.sqlite"]
            rule = OUTSIDE
        else:
            name = own.database
            spellings = [
                f"postgresql://postgres@127.0.0.1:5432/{name}",
                f"postgresql://postgres@localhost/{name}",
                f"postgresql+asyncpg://postgres@127.0.0.1/{name}",
                f"postgres://postgres:any@127.0.0.1:5432/{name}?sslmode=disable",
            ]
            rule = "the control plane's database"
        for url in spellings:
            refused(tenant.source("sql", {"url": url, "table": "connector"}), "config", rule)
            destination = {"url": url, "table": "connector", "mode": "replace"}
            refused(tenant.destination("sql", destination), "config", rule)

    def test_the_postgresql_up_runs_for_prefect_is_refused_whole(self, tmp_path: Path):
        settings = Settings(data_dir=tmp_path, allowed_hosts=["127.0.0.1"])
        scope = scope_for(1, settings)
        port = settings.prefect_postgres_port
        for name in ("postgres", "template1", "anything"):
            with pytest.raises(Refused, match=f"127.0.0.1:{port} is Prefect's PostgreSQL"):
                scope.database(f"postgresql://postgres@127.0.0.1:{port}/{name}")
        assert scope.database("postgresql://postgres@127.0.0.1:5432/test").port == 5432

    @pytest.mark.parametrize(
        ("url", "rule"),
        [
            ("postgresql://postgres@127.0.0.1:5433/test", NOT_ALLOWED),
            ("postgresql://postgres@127.0.0.3/test", NOT_ALLOWED),
            ("postgresql:///test", "names one host"),
            ("postgresql://postgres@8.8.8.8/test?host=/var/run/postgresql", "host is not allowed"),
            ("postgresql://postgres@8.8.8.8/test?sslkey=/etc/shadow", "sslkey is not allowed"),
            ("sqlite:///file:x?mode=ro&uri=true", "no query parameters"),
            ("mysql://root@127.0.0.1/test", "not supported"),
        ],
    )
    def test_hosts_and_parameters_outside_the_rules_are_refused(
        self, tenant: Tenant, url: str, rule: str
    ):
        refused(tenant.source("sql", {"url": url, "table": "t"}), "config", rule)


class TestSqliteAttach:
    def test_a_query_cannot_attach_a_file_outside_the_folder(self, tmp_path: Path):
        scope = Scope(folders=(tmp_path,))
        source = SqlSource.configured(
            {"url": "sqlite:///own.db", "query": f"ATTACH DATABASE '{tmp_path.parent}/x' AS x"},
            scope,
        )
        with pytest.raises(DatabaseError, match="not authorized"):
            list(source.read(cursor=None, batch_size=10))
        assert not (tmp_path.parent / "x").exists()


class TestWrittenStraightIntoTheDatabase:
    @pytest.mark.parametrize(
        "config",
        [
            {"path": "/etc/passwd", "delimiter": ":"},
            {"path": "../../secret.key"},
        ],
    )
    def test_the_run_fails_before_reading_or_writing(
        self, tenant: Tenant, stack: Stack, prefect: SyncPrefectClient, config: dict
    ):
        connector = created(tenant.client.post("/connectors", json=tenant.catalog.connector()))
        _store_source_config(stack, tenant.catalog.source_id, config)

        error = _failed_run(tenant, prefect, connector["id"])
        assert OUTSIDE in error
        assert not (tenant.catalog.folder / "out.jsonl").exists()
        status = tenant.client.get(f"/connectors/{connector['id']}").json()
        assert (status["lastRunState"], status["consecutiveFailures"]) == ("FAILED", 1)


def _store_source_config(stack: Stack, source_id: int, config: dict) -> None:
    """Write a defined source's config behind the API's back, encrypted as every row is."""
    token = encrypt_json(config, key_file=Path(stack.env["CONTROL_PLANE_SECRET_KEY_FILE"]))
    engine = create_engine(stack.database_url)
    with engine.begin() as db:
        db.execute(
            text("UPDATE defined_source SET config = :token WHERE id = :id"),
            {"token": token, "id": source_id},
        )
    engine.dispose()


def _failed_run(tenant: Tenant, prefect: SyncPrefectClient, connector_id: int) -> str:
    """Trigger the connector and return the error of its failed run."""
    run = trigger_and_wait(tenant.client, prefect, connector_id)
    assert run.state.type == StateType.FAILED, run.state
    page = tenant.client.get(f"/connectors/{connector_id}/runs", params={"state": "FAILED"})
    [failed] = page.json()["data"]
    return failed["error"]
