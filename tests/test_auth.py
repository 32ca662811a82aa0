"""JWT auth: 401 without a valid token, 403 without the scope, projects hide the rest."""

import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from prefect.client.orchestration import SyncPrefectClient

from bench._seed import created, make_catalog, unique
from control_plane.api.auth import READ, WRITE
from control_plane.processes import api_server, free_port, running
from tests.conftest import AuthApi, Stack
from tests.helpers import control_runs


def _claims(**overrides) -> dict:
    claims = {
        "sub": "mallory",
        "scope": f"{READ} {WRITE}",
        "exp": datetime.now(UTC) + timedelta(hours=1),
        "iss": "control-plane-tests",
        "aud": "control-plane",
    }
    claims.update(overrides)
    return {key: value for key, value in claims.items() if value is not None}


class TestAuthentication:
    def test_without_a_token_every_api_route_is_401(self, auth_api: AuthApi):
        with auth_api.client(None) as client:
            for method, path in [
                ("GET", "/connectors"),
                ("POST", "/connectors"),
                ("GET", "/projects"),
                ("DELETE", "/defined-sources/1"),
                ("POST", "/connectors/1/trigger"),
            ]:
                response = client.request(method, path)
                assert response.status_code == 401, (method, path, response.text)
                assert response.headers["WWW-Authenticate"] == "Bearer"
                assert "Bearer" in response.json()["detail"]
        assert httpx.get(f"{auth_api.url}/health").status_code == 200

    @pytest.mark.parametrize(
        ("claims", "key", "problem"),
        [
            (_claims(exp=datetime.now(UTC) - timedelta(minutes=1)), None, "expired"),
            (_claims(exp=None), None, '"exp"'),
            (_claims(sub=None), None, '"sub"'),
            (_claims(aud="someone-else"), None, "audience"),
            (_claims(iss="someone-else"), None, "issuer"),
            (_claims(), "not-the-secret-but-long-enough-for-hs256!", "Signature"),
        ],
    )
    def test_a_bad_token_is_401_saying_why(self, auth_api: AuthApi, claims, key, problem):
        secret = key or auth_api.settings.auth_jwt_secret.get_secret_value()
        token = jwt.encode(claims, secret, algorithm="HS256")
        with auth_api.client(token) as client:
            response = client.get("/connectors")
        assert response.status_code == 401
        assert problem.lower() in response.json()["detail"].lower()

    def test_a_token_that_is_no_jwt_is_401(self, auth_api: AuthApi):
        with auth_api.client("not-a-jwt") as client:
            assert client.get("/connectors").status_code == 401


class TestScopes:
    def test_read_scope_reads_and_cannot_change(self, auth_api: AuthApi, stack: Stack):
        with auth_api.client(auth_api.token()) as writer:
            catalog = make_catalog(writer, stack.files)
            connector = created(writer.post("/connectors", json=catalog.connector()))
        path = f"/connectors/{connector['id']}"
        with auth_api.client(auth_api.token(scopes=[READ])) as reader:
            assert reader.get(path).status_code == 200
            for method, url in [("PATCH", path), ("DELETE", path), ("POST", f"{path}/trigger")]:
                response = reader.request(method, url, json={} if method == "PATCH" else None)
                assert response.status_code == 403, response.text
                assert WRITE in response.json()["detail"]
            assert reader.get(path).json()["updatedAt"] == connector["updatedAt"]

    def test_no_scope_is_403(self, auth_api: AuthApi):
        with auth_api.client(auth_api.token(scopes=[])) as client:
            assert client.get("/connectors").status_code == 403

    def test_the_subject_is_the_audit_actor(
        self, auth_api: AuthApi, prefect: SyncPrefectClient, stack: Stack
    ):
        actor = unique("alice")
        with auth_api.client(auth_api.token(sub=actor)) as client:
            catalog = make_catalog(client, stack.files)
            connector = created(client.post("/connectors", json=catalog.connector()))
        [run] = control_runs(prefect, connector["id"])
        assert f"actor:{actor}" in run.tags


class TestProjectsClaim:
    def test_other_projects_do_not_exist_for_the_caller(self, auth_api: AuthApi, stack: Stack):
        with auth_api.client(auth_api.token()) as admin:
            mine = make_catalog(admin, stack.files)
            theirs = make_catalog(admin, stack.files)
            my_connector = created(admin.post("/connectors", json=mine.connector()))
            their_connector = created(admin.post("/connectors", json=theirs.connector()))
        with auth_api.client(auth_api.token(projects=[mine.project_id])) as client:
            assert client.get(f"/connectors/{my_connector['id']}").status_code == 200
            hidden = f"/connectors/{their_connector['id']}"
            for method in ("GET", "PATCH", "DELETE"):
                response = client.request(method, hidden, json={} if method == "PATCH" else None)
                assert response.status_code == 404, (method, response.text)
            assert client.post(f"{hidden}/trigger").status_code == 404
            assert client.get(f"/projects/{theirs.project_id}").status_code == 404
            assert client.get(f"/defined-sources/{theirs.source_id}").status_code == 404
            listed = client.get("/connectors").json()
            assert {c["projectId"] for c in listed["data"]} == {mine.project_id}
            assert [p["id"] for p in client.get("/projects").json()["data"]] == [mine.project_id]
            response = client.post("/connectors", json=theirs.connector())
            assert response.status_code == 422
            assert response.json()["detail"][0]["loc"] == ["body", "projectId"]
            moved = client.patch(
                f"/connectors/{my_connector['id']}", json={"projectId": theirs.project_id}
            )
            assert moved.status_code == 422
            assert client.post("/projects", json={"name": unique("p")}).status_code == 403

    @pytest.mark.parametrize(
        "projects", ["12", [True], ["1"], 1, [1.5], [[1]], [0], [2**31], None, {"1": 1}]
    )
    def test_projects_that_are_not_a_list_of_ids_are_401(self, auth_api: AuthApi, projects):
        secret = auth_api.settings.auth_jwt_secret.get_secret_value()
        token = jwt.encode({**_claims(), "projects": projects}, secret, algorithm="HS256")
        with auth_api.client(token) as client:
            response = client.get("/connectors")
        assert response.status_code == 401, response.text
        assert "`projects` must be a list of project ids (integers" in response.json()["detail"]

    def test_a_list_of_ids_limits_the_caller(self, auth_api: AuthApi):
        with auth_api.client(auth_api.token()) as admin:
            mine = created(admin.post("/projects", json={"name": unique("project")}))
        secret = auth_api.settings.auth_jwt_secret.get_secret_value()
        claims = {**_claims(), "projects": [mine["id"]]}
        with auth_api.client(jwt.encode(claims, secret, algorithm="HS256")) as client:
            listed = client.get("/projects")
        assert listed.status_code == 200, listed.text
        assert [p["id"] for p in listed.json()["data"]] == [mine["id"]]


def _operations(spec: dict) -> dict[str, dict]:
    return {
        f"{method.upper()} {path}": operation
        for path, methods in spec["paths"].items()
        for method, operation in methods.items()
    }


class TestOpenApi:
    def test_without_auth_the_spec_declares_no_security(self, stack):
        spec = httpx.get(f"{stack.api_url}/openapi.json").json()
        assert "securitySchemes" not in spec.get("components", {})
        assert "security" not in spec
        assert [name for name, op in _operations(spec).items() if "security" in op] == []
        assert [name for name, op in _operations(spec).items() if "401" in op["responses"]] == []

    def test_operations_have_stable_camel_case_ids(self, stack):
        ids = [
            op["operationId"]
            for op in _operations(httpx.get(f"{stack.api_url}/openapi.json").json()).values()
        ]
        assert len(ids) == len(set(ids))
        assert [i for i in ids if not re.fullmatch(r"[a-z][a-zA-Z]*", i)] == []
        seed = {"createConnector", "updateConnector", "triggerConnector", "deleteConnector"}
        assert seed <= set(ids)

    def test_with_auth_every_api_route_declares_bearer(self, auth_api: AuthApi):
        spec = httpx.get(f"{auth_api.url}/openapi.json").json()
        [(name, scheme)] = spec["components"]["securitySchemes"].items()
        assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
        operations = _operations(spec)
        guarded = {key for key, op in operations.items() if op.get("security") == [{name: []}]}
        assert guarded == {key for key in operations if " /api/v1/" in key}
        assert "GET /health" not in guarded
        documented = {
            key for key, op in operations.items() if {"401", "403"} <= set(op["responses"])
        }
        assert documented == guarded


class TestTokenCommand:
    def test_minted_tokens_are_accepted(self, auth_api: AuthApi):
        settings = auth_api.settings
        env = {
            **os.environ,
            "CONTROL_PLANE_AUTH_JWT_SECRET": settings.auth_jwt_secret.get_secret_value(),
            "CONTROL_PLANE_AUTH_ISSUER": settings.auth_issuer,
            "CONTROL_PLANE_AUTH_AUDIENCE": settings.auth_audience,
        }
        command = [str(Path(sys.executable).parent / "control-plane"), "token", "--sub", "cli"]
        command += ["--scope", READ]
        token = subprocess.run(
            command, env=env, check=True, capture_output=True, text=True
        ).stdout.strip()
        with auth_api.client(token) as client:
            assert client.get("/connectors").status_code == 200
            assert client.post("/projects", json={"name": unique("p")}).status_code == 403


@pytest.fixture(scope="module")
def jwks() -> Iterator[tuple[str, rsa.RSAPrivateKey]]:
    """A JWKS endpoint on loopback serving one RSA public key, with its private key."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    body = json.dumps({"keys": [{**jwk, "kid": "test-key", "use": "sig", "alg": "RS256"}]})

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body.encode())

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/jwks.json", key
    server.shutdown()
    server.server_close()


class TestRs256:
    def test_jwks_keys_verify_tokens(self, stack, jwks, tmp_path):
        url, key = jwks
        env = {
            **stack.env,
            "CONTROL_PLANE_AUTH_ENABLED": "true",
            "CONTROL_PLANE_AUTH_JWKS_URL": url,
        }
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        with running(api_server(env, port, tmp_path / "api.log"), f"{base}/health"):
            claims = _claims(iss=None, aud=None)
            good = jwt.encode(claims, key, algorithm="RS256", headers={"kid": "test-key"})
            other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            forged = jwt.encode(claims, other_key, algorithm="RS256", headers={"kid": "test-key"})
            for token, status in [(good, 200), (forged, 401)]:
                response = httpx.get(
                    f"{base}/api/v1/connectors",
                    headers={"Authorization": f"Bearer {token}"},
                )
                assert response.status_code == status, response.text
