"""What the benchmarks and the tests both set up before they measure or check, and the package
does not need: a fresh database on the machine's PostgreSQL, and a project with a CSV source and
a JSONL destination made through the HTTP API (`make_catalog`).

Here, not under `tests/`, so that no benchmark imports a test module; the tests import it.
"""

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg
from sqlalchemy.engine import make_url

POSTGRES_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
START_POSTGRES = "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start"

# The seeded connectors' schedule: 03:00 UTC on the 1st, so a test or benchmark rarely sees one
# fire, and within Prefect's 100 days of scheduled runs. Every 4 hours, a run of the suite that
# crossed 20:00 UTC started fifty scheduled sync runs at once.
MONTHLY = "0 3 1 * *"


class PostgresMissing(RuntimeError):
    """The machine's PostgreSQL does not answer; the message says how to start it."""


@contextmanager
def postgres_database(name: str, driver: str = "postgresql+psycopg") -> Iterator[str]:
    """A fresh database on the machine's PostgreSQL, dropped afterwards; yields its URL."""
    try:
        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True, connect_timeout=5) as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError as error:
        raise PostgresMissing(
            f"PostgreSQL is not reachable at {POSTGRES_ADMIN_URL} ({error}). "
            f"Start it with: {START_POSTGRES}"
        ) from error
    try:
        yield (
            make_url(POSTGRES_ADMIN_URL)
            .set(drivername=driver, database=name)
            .render_as_string(hide_password=False)
        )
    finally:
        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def unique(prefix: str) -> str:
    """`prefix` with a random suffix, so runs need not wipe what earlier ones made."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def created(response: httpx.Response) -> dict:
    """The body of a 201 answer; fails on any other status."""
    assert response.status_code == 201, response.text
    return response.json()


@dataclass
class Catalog:
    project_id: int
    source_id: int
    destination_id: int
    folder: Path  # the project's folder: its connectors' files

    def connector(self, **fields) -> dict:
        """A connector body for this catalog; `fields` override the defaults (camelCase)."""
        return {
            "name": unique("connector"),
            "projectId": self.project_id,
            "definedSourceId": self.source_id,
            "definedDestinationId": self.destination_id,
            "schedule": MONTHLY,
            "isActive": True,
            "sourceConfigOverride": {},
            "destinationConfigOverride": {},
            **fields,
        }


def make_catalog(api: httpx.Client, files: Path) -> Catalog:
    """A new project with a CSV source of two rows and a JSONL destination, in the project's
    folder under the file root `files`."""
    project = created(api.post("/projects", json={"name": unique("project")}))
    folder = files / str(project["id"])
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "in.csv").write_text("id,name\n1,a\n2,b\n")
    ids = [
        created(
            api.post(
                f"/defined-{kind}s",
                json={
                    "name": unique(kind),
                    "type": type_,
                    "config": {"path": file},
                    "projectId": project["id"],
                },
            )
        )["id"]
        for kind, type_, file in (
            ("source", "csv", "in.csv"),
            ("destination", "jsonl", "out.jsonl"),
        )
    ]
    return Catalog(project["id"], *ids, folder)
