"""Every setting of the control plane, read from `CONTROL_PLANE_*` variables or `.env`."""

import os
from datetime import timedelta
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from control_plane.durations import check_staleness


class Settings(BaseSettings):
    """The control plane's settings; Prefect's own (`PREFECT_API_URL`, ...) stay Prefect's."""

    model_config = SettingsConfigDict(env_prefix="CONTROL_PLANE_", env_file=".env", extra="ignore")

    data_dir: Path = Field(
        default=Path(".data"),
        description="Where the embedded defaults keep their files (databases, Prefect home).",
    )
    database_url: str | None = Field(
        default=None,
        description=(
            "SQLAlchemy URL of the control plane's database, e.g. "
            "`postgresql+psycopg://user@host/db`. Default: SQLite at `<data_dir>/control-plane.db`."
        ),
    )
    work_pool_type: str = Field(
        default="process",
        description=(
            "Worker type of the connectors' work pool when `up` or `deploy` creates it: "
            "process, docker, kubernetes, ... (a pool that exists keeps its own)."
        ),
    )
    job_variables: dict[str, Any] = Field(
        default_factory=dict,
        description=(
            "Job variables of every connector deployment, as JSON: what the pool's job "
            'template takes, e.g. {"image": "...", "env": {...}} on a kubernetes pool.'
        ),
    )
    log_format: Literal["text", "json"] = Field(
        default="text",
        description=(
            "The API's log lines on stderr: text, or JSON objects (time, level, logger, "
            "message, flowRunId of the control flow run the line belongs to)."
        ),
    )
    work_pool: str = Field(
        default="connectors",
        description="Prefect work pool that runs the connectors' `sync-connector` deployments.",
    )
    max_consecutive_failures: int = Field(
        default=5,
        ge=0,
        description="Failed sync runs in a row that deactivate a connector (0: never).",
    )
    run_retries: int = Field(
        default=0,
        ge=0,
        le=10,
        description="Times a failed sync run is tried again, for connectors without `retries`.",
    )
    run_retry_delay_seconds: int = Field(
        default=60,
        ge=0,
        description="Seconds between tries, for connectors without `retryDelaySeconds`.",
    )
    run_timeout_seconds: int = Field(
        default=86_400,
        ge=0,
        description=(
            "Seconds a sync run may take, for connectors without `timeoutSeconds` (0: no limit)."
        ),
    )
    max_staleness: Annotated[timedelta, AfterValidator(check_staleness)] | None = Field(
        default=None,
        description=(
            "Freshness SLA of connectors without `maxStaleness`, as an ISO 8601 duration "
            "(`PT6H`): no successful run for this long makes a connector stale. Default: none."
        ),
    )
    first_sync_on_create: bool = Field(
        default=False, description="Run a connector once as soon as it is created."
    )
    check_timeout_seconds: float = Field(
        default=60.0,
        gt=0,
        le=3600,
        description=(
            "Seconds a connection check may take, from its request to its result, the start of "
            "its run on a worker included; a check without a result by then fails."
        ),
    )
    require_check: bool = Field(
        default=False,
        description=(
            "Activate a connector only after a check of it passed with the configs it has "
            "(`POST /connectors/{id}/check`)."
        ),
    )
    api_host: str = Field(default="127.0.0.1", description="Address the REST API listens on.")
    api_port: int = Field(default=8000, description="Port the REST API listens on.")
    api_url: str | None = Field(
        default=None,
        description=(
            "The API that `plan`, `apply` and `export` talk to. Default: "
            "`http://<api_host>:<api_port>`, the one `up` starts."
        ),
    )
    api_token: SecretStr | None = Field(
        default=None,
        description="Bearer token (JWT) that `plan`, `apply` and `export` send, when auth is on.",
    )
    prefect_host: str = Field(
        default="127.0.0.1", description="Address of the Prefect server that `up` starts."
    )
    prefect_port: int = Field(
        default=4200, description="Port of the Prefect server (and UI) that `up` starts."
    )
    prefect_database_url: str | None = Field(
        default=None,
        description=(
            "Database of the Prefect server that `up` starts, e.g. "
            "`postgresql+asyncpg://user@host/prefect`. Default: a PostgreSQL that `up` runs, "
            "with its cluster in `<data_dir>/postgres`."
        ),
    )
    redis_port: int = Field(
        default=4202,
        description="Port (on 127.0.0.1) of the Redis that `up --profile scale` runs for Prefect.",
    )
    prefect_postgres_port: int = Field(
        default=4201,
        description=(
            "Port (on 127.0.0.1) of the PostgreSQL that `up` runs for Prefect's server when "
            "`prefect_database_url` is unset."
        ),
    )
    scheduler_max_runs: int = Field(
        default=10,
        description=(
            "Most scheduled runs the Prefect server that `up` starts keeps ahead per deployment "
            "(Prefect's default is 100)."
        ),
    )
    worker_poll_seconds: float = Field(
        default=0.5,
        description="How often the worker that `up` starts asks Prefect for runs (Prefect: 10 s).",
    )
    stop_grace_seconds: float = Field(
        default=10,
        gt=0,
        description=(
            "How long a process of the stack `up` runs has to stop after SIGTERM before it is "
            "killed; the API gets half of it to finish the requests in flight."
        ),
    )

    batch_size: int = Field(
        default=10_000, ge=1, description="Records a sync run reads and writes at a time."
    )
    reconcile_interval_seconds: int = Field(
        default=300,
        ge=0,
        description="How often reconcile-connectors runs a pass over what changed (0: never).",
    )
    full_reconcile_interval_seconds: int = Field(
        default=3600,
        ge=0,
        description="How often reconcile-connectors compares every connector (0: never on its "
        "own).",
    )
    idempotency_key_hours: float = Field(
        default=24, gt=0, description="How long an Idempotency-Key's answer is replayed."
    )
    max_body_bytes: int = Field(
        default=1_048_576, ge=1024, description="Largest request body the API accepts."
    )
    pause_points: frozenset[str] = Field(
        default=frozenset(),
        description=(
            "Testing aid: named points in the flows where the process stops and waits, so a "
            "test can kill it there or let it go on (e.g. sync-connector:during-write)."
        ),
    )
    file_roots: list[Path] | None = Field(
        default=None,
        description=(
            "Folders whose `<project id>` subfolders hold each project's files: a connector's "
            "paths resolve inside its project's folder and nowhere else. JSON list. "
            "Default: `[<data_dir>/files]`."
        ),
    )
    airbyte_dir: Path | None = Field(
        default=None,
        description=(
            "Where Airbyte connectors are installed, a virtualenv each. "
            "Default: `<data_dir>/airbyte`."
        ),
    )
    airbyte_connectors: list[str] = Field(
        default=["source-faker"],
        description=(
            "The Airbyte sources (`source-<name>`, installed from PyPI as "
            "`airbyte-source-<name>`) the airbyte type may run: code from PyPI, run on the "
            "worker with its own network access. JSON list."
        ),
    )
    allowed_hosts: list[str] = Field(
        default_factory=list,
        description=(
            "Hosts, addresses and networks that sql and http connectors may reach although they "
            "are not public (loopback, private, link-local), each optionally with a port: "
            '`["db.internal", "10.1.0.0/16", "127.0.0.1:5432"]`. JSON list.'
        ),
    )
    secret_key_file: Path | None = Field(
        default=None,
        description=(
            "File of the Fernet keys that encrypt stored configs, newest first, mode 0600; "
            "`up`, `migrate` and `rotate-key` create it when missing. "
            "Default: `<data_dir>/secret.key`."
        ),
    )
    auth_enabled: bool = Field(
        default=False,
        description="Require `Authorization: Bearer <JWT>` on every /api/v1 route.",
    )
    auth_jwt_secret: SecretStr | None = Field(
        default=None, description="Shared secret of HS256 tokens (also what `token` signs with)."
    )
    auth_jwt_public_key: str | None = Field(
        default=None, description="PEM public key of RS256 tokens."
    )
    auth_jwks_url: str | None = Field(
        default=None, description="JWKS URL whose keys verify RS256 tokens (by their `kid`)."
    )
    auth_issuer: str | None = Field(default=None, description="Required `iss` of tokens, if set.")
    auth_audience: str | None = Field(default=None, description="Required `aud` of tokens, if set.")

    @field_validator("allowed_hosts")
    @classmethod
    def _hosts_parse(cls, entries: list[str]) -> list[str]:
        # Imported here: the policy module reads these settings.
        from control_plane.policy import Allowed

        for entry in entries:
            Allowed.parse(entry)
        return entries

    @property
    def resolved_database_url(self) -> str:
        """The database URL, defaulting to SQLite under `data_dir`."""
        return self.database_url or f"sqlite:///{self.data_dir.resolve() / 'control-plane.db'}"

    @property
    def resolved_api_url(self) -> str:
        return self.api_url or f"http://{self.api_host}:{self.api_port}"

    @property
    def airbyte_path(self) -> Path:
        """Where Airbyte connectors are installed, absolute."""
        return (self.airbyte_dir or self.data_dir / "airbyte").resolve()

    @property
    def resolved_file_roots(self) -> list[Path]:
        """The file roots, defaulting to `files` under `data_dir`, as absolute real paths."""
        roots = self.file_roots or [self.data_dir / "files"]
        return [Path(os.path.realpath(root)) for root in roots]

    @cached_property  # every stored config read asks for it: resolve the path once
    def resolved_secret_key_file(self) -> Path:
        return (self.secret_key_file or self.data_dir / "secret.key").resolve()


@lru_cache
def get_settings() -> Settings:
    """The process's settings, read once; tests clear the cache to change them."""
    return Settings()
