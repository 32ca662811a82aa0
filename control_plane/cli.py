"""The `control-plane` command: `up` starts the stack; `migrate`, `deploy`, `reconcile`, `token`;
`plan`, `apply` and `export` keep connectors as code through the REST API."""

import argparse
import asyncio
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from importlib.metadata import version
from pathlib import Path

import httpx
from prefect.settings import (
    PREFECT_API_URL,
    PREFECT_SERVER_EPHEMERAL_ENABLED,
    temporary_settings,
)
from sqlmodel import SQLModel

import models  # noqa: F401  (registers every table on SQLModel.metadata, for rotate-key)
from control_plane import as_code, bootstrap, encryption, postgres
from control_plane.api.auth import READ, WRITE, mint
from control_plane.db import get_engine, migrate
from control_plane.errors import ControlPlaneError
from control_plane.manifest import ManifestError, load
from control_plane.processes import (
    StartFailed,
    answers,
    api_command,
    listens_on,
    port_taken,
    prefect_server_command,
    prefect_services_command,
    redis_command,
    worker_command,
)
from control_plane.settings import Settings, get_settings
from control_plane.supervisor import Supervisor
from flows.reconcile import reconcile_connectors


def prefect_database(settings: Settings) -> str | None:
    """The database set for the Prefect server `up` starts: ours, or Prefect's own setting."""
    return settings.prefect_database_url or os.environ.get("PREFECT_SERVER_DATABASE_CONNECTION_URL")


def prefect_server_env(settings: Settings, home: Path, database: str) -> dict[str, str]:
    """Environment of a Prefect server with a bounded scheduler, on `database`."""
    return {
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_DATABASE_CONNECTION_URL": database,
        "PREFECT_SERVER_SERVICES_SCHEDULER_MAX_RUNS": str(settings.scheduler_max_runs),
        "PREFECT_SERVER_SERVICES_SCHEDULER_MIN_RUNS": str(min(3, settings.scheduler_max_runs)),
        # Cover only what MAX_RUNS runs of an every-minute connector cover. Prefect's default,
        # an hour, is more than MAX_RUNS runs of anything up to every 6 minutes reach, so its
        # scheduler would revisit each of those connectors on every loop.
        "PREFECT_SERVER_SERVICES_SCHEDULER_MIN_SCHEDULED_TIME": f"PT{settings.scheduler_max_runs}M",
        # Prefect keeps 5 database connections and opens and closes the rest under load: with 16
        # clients creating connectors, its PostgreSQL spent 71 ms of CPU per create, mostly
        # setting up new connections, 19 ms with this pool. SQLite ignores it.
        "PREFECT_SERVER_DATABASE_SQLALCHEMY_POOL_SIZE": os.environ.get(
            "PREFECT_SERVER_DATABASE_SQLALCHEMY_POOL_SIZE", "30"
        ),
        # The UI finds the API at this URL. Prefect derives it from its own host and port
        # settings, not from `--port`: on any other port than 4200 the UI could not connect.
        "PREFECT_SERVER_UI_API_URL": f"http://{settings.prefect_host}:{settings.prefect_port}/api",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_UI_SHOW_PROMOTIONAL_CONTENT": "false",
    }


# The scale profile's processes of Prefect's API and of the control plane's.
SCALED_WORKERS = 2


def redis_messaging_env(redis_url: str) -> dict[str, str]:
    """Prefect's server with its messaging, caches, ordering, leases and background tasks on
    Redis, so that several API processes and a process of its services share them (Prefect's
    guide to scaling a self-hosted server; the module paths are prefect-redis's)."""
    return {
        "PREFECT_MESSAGING_BROKER": "prefect_redis.messaging",
        "PREFECT_MESSAGING_CACHE": "prefect_redis.messaging",
        "PREFECT_SERVER_EVENTS_CAUSAL_ORDERING": "prefect_redis.ordering",
        "PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE": "prefect_redis.lease_storage",
        "PREFECT_REDIS_MESSAGING_URL": redis_url,
        "PREFECT_SERVER_DOCKET_URL": redis_url,
    }


# What a worker and its runs never get: the API's auth settings (a run has no use for the JWT
# secret), and libpq's variables, which would fill in what a tenant's PostgreSQL URL left out.
_NOT_FOR_WORKERS = ("CONTROL_PLANE_AUTH_", "PG")


def worker_environment(env: dict[str, str], settings: Settings) -> dict[str, str]:
    """What a worker, and every run it starts, gets: the settings as variables, since a run
    starts in a temporary directory and reads no `.env`, but nothing in `_NOT_FOR_WORKERS`."""
    values = settings.model_dump(mode="json", exclude_none=True)
    variables = {
        f"CONTROL_PLANE_{name.upper()}": value if isinstance(value, str) else json.dumps(value)
        for name, value in values.items()
    }
    merged = {**variables, **env}
    return {name: value for name, value in merged.items() if not name.startswith(_NOT_FOR_WORKERS)}


def _check_ports(settings: Settings, *, own_server: bool, scaled: bool) -> None:
    """Exit with status 1, naming the process that holds it, when a port the stack would listen
    on is taken: a stack started half against someone else's server (an orphaned Prefect
    server of an earlier `up`, whose database may be gone) serves errors that look healthy."""
    ports = [("the API", "CONTROL_PLANE_API_PORT", settings.api_host, settings.api_port)]
    if own_server:
        ports.append(
            ("Prefect", "CONTROL_PLANE_PREFECT_PORT", settings.prefect_host, settings.prefect_port)
        )
        if not prefect_database(settings):
            variable, port = "CONTROL_PLANE_PREFECT_POSTGRES_PORT", settings.prefect_postgres_port
            ports.append(("Prefect's PostgreSQL", variable, "127.0.0.1", port))
        if scaled:
            ports.append(("Redis", "CONTROL_PLANE_REDIS_PORT", "127.0.0.1", settings.redis_port))
    for owner, variable, host, port in ports:
        if problem := port_taken(host, port):
            sys.exit(
                f"control-plane up: port {port} of {owner} on {host} {problem}; stop it, or set "
                f"{variable} to a free port. Nothing was started."
            )


def up(profile: str = "single") -> None:
    """Migrate, then run Prefect's server (unless PREFECT_API_URL is set), a worker per pool and
    the API, restart what dies, and stop it all on SIGINT, SIGTERM or SIGHUP. The `scale`
    profile runs Prefect's API and the control plane's in `SCALED_WORKERS` processes each,
    Prefect's services in one of their own, and Redis for Prefect's messaging.

    Exits with 0 after a clean stop, with 1 when the stack did not start or a process had to be
    killed because it did not stop within `stop_grace_seconds`.
    """
    settings = get_settings()
    own_server = not os.environ.get("PREFECT_API_URL")
    scaled = profile == "scale"
    if scaled and importlib.util.find_spec("prefect_redis") is None:
        sys.exit("control-plane up --profile scale needs prefect-redis: pip install '.[scale]'")
    _check_ports(settings, own_server=own_server, scaled=scaled)
    data_dir = settings.data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    migrate()
    env = {
        **os.environ,
        "CONTROL_PLANE_DATA_DIR": str(data_dir),
        "CONTROL_PLANE_DATABASE_URL": settings.resolved_database_url,
        "CONTROL_PLANE_SECRET_KEY_FILE": str(settings.resolved_secret_key_file),
        "CONTROL_PLANE_FILE_ROOTS": json.dumps([str(r) for r in settings.resolved_file_roots]),
    }
    supervisor = Supervisor(grace=settings.stop_grace_seconds, state_file=data_dir / "up.json")
    sys.exit(supervisor.run(lambda: _start_stack(supervisor, settings, env, own_server, scaled)))


def _start_stack(
    supervisor: Supervisor, settings: Settings, env: dict[str, str], own_server: bool, scaled: bool
) -> None:
    """Start the stack's processes under `supervisor`, each once the one it needs answers."""
    control_pools = {d["work_pool"]["name"] for d in bootstrap.control_deployments()}
    pools = sorted({settings.work_pool} | control_pools)
    if own_server:
        database = prefect_database(settings) or _start_postgres(supervisor, settings)
        home = settings.data_dir.resolve() / "prefect"
        home.mkdir(exist_ok=True)
        server = f"http://{settings.prefect_host}:{settings.prefect_port}"
        server_env = {**env, **prefect_server_env(settings, home, database)}
        if scaled:
            server_env |= redis_messaging_env(_start_redis(supervisor, settings))
            server_env |= migrate_prefect(server_env)
        command = prefect_server_command(
            host=settings.prefect_host,
            port=settings.prefect_port,
            workers=SCALED_WORKERS if scaled else 1,
        )
        prefect = supervisor.start(
            "Prefect server",
            command,
            server_env,
            tier=1,
            ready=lambda: answers(f"{server}/api/health"),
            # By the time it could restart, `env` has the server's PREFECT_API_URL (below).
            on_ready_again=lambda: _after_prefect_restart(supervisor, env),
        )
        supervisor.wait_ready(prefect, timeout=120)
        if scaled:
            supervisor.start("Prefect services", prefect_services_command(), server_env, tier=1)
        env["PREFECT_API_URL"] = f"{server}/api"
    # Prefect read its settings at import: point this process at the server explicitly.
    with temporary_settings({PREFECT_API_URL: env["PREFECT_API_URL"]}):
        # On a server of our own, whose workers all run here, runs start the engine directly.
        engine = bootstrap.LOCAL_ENGINE if own_server else None
        try:
            for pool in pools:
                asyncio.run(
                    bootstrap.ensure_work_pool(
                        pool, command=engine, worker_type=_worker_type(pool, settings)
                    )
                )
            for name in asyncio.run(bootstrap.deploy_control_flows()):
                print(f"deployed {name}")
        except ControlPlaneError as error:
            raise StartFailed(f"registering the work pools and deployments: {error}") from error
    worker_env = {
        **worker_environment(env, settings),
        "PREFECT_WORKER_QUERY_SECONDS": str(settings.worker_poll_seconds),
    }
    for pool in pools:
        if _worker_type(pool, settings) != "process":
            print(
                f"work pool {pool} is of type {settings.work_pool_type}: start its workers where "
                f"they run (prefect worker start --type {settings.work_pool_type} --pool {pool})"
            )
            continue
        supervisor.start(f"worker {pool}", worker_command(pool), worker_env, tier=2)
    api = f"http://{settings.api_host}:{settings.api_port}"
    command = api_command(
        host=settings.api_host,
        port=settings.api_port,
        workers=SCALED_WORKERS if scaled else None,
        # Half the grace period for the requests in flight; the rest to answer the ones cut
        # short with a 503 and to shut down, before the supervisor kills the process.
        graceful_shutdown=max(1, int(settings.stop_grace_seconds / 2)),
    )
    api_process = supervisor.start(
        "API", command, env, tier=2, ready=lambda: answers(f"{api}/readyz")
    )
    supervisor.wait_ready(api_process, timeout=60)
    print(
        f"\nConnector control plane is up.\n"
        f"  API:        {api}/api/v1  (docs: {api}/docs)\n"
        f"  Prefect UI: {env['PREFECT_API_URL'].removesuffix('/api')}\n"
        f"  Workers:    pools {', '.join(pools)}\n"
        f"  Processes:  {supervisor.state_file}\n"
        f"Ctrl-C (or SIGTERM, SIGHUP) stops everything started here.\n",
        flush=True,
    )


def _start_redis(supervisor: Supervisor, settings: Settings) -> str:
    """Run the Redis of Prefect's messaging (the scale profile, `redis_command`); its URL."""
    if shutil.which("redis-server") is None:
        raise StartFailed(
            "the scale profile needs redis-server: install it (make redis, or your system's "
            "redis-server package)"
        )
    port = settings.redis_port
    process = supervisor.start(
        "Redis", redis_command(port), {}, tier=0, ready=lambda: listens_on(port)
    )
    supervisor.wait_ready(process, timeout=30)
    return f"redis://127.0.0.1:{port}/0"


# What each of Prefect's API processes does on start (its lifespan), done once beforehand.
_PREPARE_PREFECT = """
import asyncio
from prefect.server.database import provide_database_interface
from prefect.server.models.block_registration import run_block_auto_registration

async def prepare():
    db = provide_database_interface()
    await db.create_db()
    async with await db.session() as session:
        await run_block_auto_registration(session=session)

asyncio.run(prepare())
"""


def migrate_prefect(env: Mapping[str, str]) -> dict[str, str]:
    """Migrate Prefect's database and register its block types once, as each API process of
    Prefect's would on start: several at once fail (a table renamed twice, a block type
    inserted twice). The variables that keep its API processes from doing it again."""
    done = subprocess.run(
        [sys.executable, "-c", _PREPARE_PREFECT], env=dict(env), capture_output=True, text=True
    )
    if done.returncode != 0:
        raise StartFailed(f"preparing Prefect's database failed: {done.stderr[-2000:]}")
    return {
        "PREFECT_SERVER_DATABASE_MIGRATE_ON_START": "false",
        "PREFECT_SERVER_REGISTER_BLOCKS_ON_START": "false",
    }


def _start_postgres(supervisor: Supervisor, settings: Settings) -> str:
    """Run the PostgreSQL of Prefect's server (`control_plane.postgres`); its URL.

    With an empty environment: it needs none, and may run as another user, who could read it.
    """
    try:
        cluster = postgres.cluster(settings)
    except postgres.ClusterError as error:
        raise StartFailed(str(error)) from error
    process = supervisor.start(
        "PostgreSQL", cluster.command, {}, tier=0, ready=cluster.ready, user=cluster.user
    )
    supervisor.wait_ready(process, timeout=60)
    return cluster.url


def _worker_type(pool: str, settings: Settings) -> str:
    """The connectors' pool is of the type the settings say; the control flows' is a process
    pool, run here."""
    return settings.work_pool_type if pool == settings.work_pool else "process"


def _after_prefect_restart(supervisor: Supervisor, env: dict[str, str]) -> None:
    """Once a restarted Prefect server answers: bring back at once the workers that died
    without it, and run a reconcile, which repairs what the outage left half-done (a change
    the database has and Prefect does not, or the reverse)."""
    supervisor.restart_waiting()
    if not supervisor.running("reconcile"):
        command = [sys.executable, "-m", "control_plane.cli", "reconcile"]
        supervisor.start("reconcile", command, env, tier=2, once=True)


def rotate_key() -> None:
    """Put a new key first in the key file, re-encrypt every stored config under it, and keep
    the previous key (for processes that have not read the file again yet), no older one."""
    try:
        # A missing key file is an error here: a new one would open none of the stored rows.
        key_file = encryption.check_key_file(get_settings().resolved_secret_key_file)
        counts = asyncio.run(_rotate_key(key_file))
    except encryption.SecretKeyError as error:
        sys.exit(f"rotate-key: {error}")
    for table, count in counts.items():
        print(f"{table:<20} {count}")
    print(f"{sum(counts.values())} rows re-encrypted under the new key of {key_file}")


async def _rotate_key(key_file: Path) -> dict[str, int]:
    engine = get_engine()
    try:
        return await encryption.rotate_key(
            engine=engine, metadata=SQLModel.metadata, key_file=key_file
        )
    finally:
        await engine.dispose()


# Commands that need no Prefect server: `up` starts (or finds) its own, the others touch only the
# database or sign tokens.
_WITHOUT_PREFECT = {"up", "migrate", "rotate-key", "token", "plan", "apply", "export"}
_AS_CODE = {"plan", "apply", "export"}


def _prefect_api_url(settings: Settings) -> str:
    """PREFECT_API_URL, or else the API of the Prefect server `up` starts, if it answers.

    Exits with status 1, saying how to point the command at a server, when nothing answers.
    """
    if url := PREFECT_API_URL.value():
        return url
    url = f"http://{settings.prefect_host}:{settings.prefect_port}/api"
    try:
        if httpx.get(f"{url}/health", timeout=5).status_code == 200:
            return url
    except httpx.HTTPError:
        pass
    sys.exit(
        f"no Prefect server answers at {url} (PREFECT_API_URL is not set): start the stack "
        "with `make up` in another terminal (its server listens on CONTROL_PLANE_PREFECT_HOST "
        "and CONTROL_PLANE_PREFECT_PORT), or set PREFECT_API_URL to your Prefect server's API"
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="control-plane", description=__doc__)
    # The version is pyproject.toml's, as installed.
    parser.add_argument("--version", action="version", version=version("connector-control-plane"))
    commands = parser.add_subparsers(dest="command", required=True)
    start = commands.add_parser(
        "up",
        help="run Prefect (unless PREFECT_API_URL is set), workers and the API until stopped",
        description=(
            "Run and supervise the stack: what dies is restarted; SIGINT, SIGTERM or SIGHUP "
            "stops it all. Exit status: 0 after a clean stop, 1 when a port is taken, the stack "
            "did not start, or a process had to be killed."
        ),
    )
    start.add_argument(
        "--profile",
        choices=["single", "scale"],
        default="single",
        help=(
            f"scale: Prefect's API and the control plane's in {SCALED_WORKERS} processes each, "
            "Prefect's services in their own, Redis for Prefect's messaging (needs '.[scale]')"
        ),
    )
    commands.add_parser("migrate", help="bring the database schema up to date")
    commands.add_parser(
        "rotate-key", help="encrypt every stored config under a new key of the key file"
    )
    commands.add_parser(
        "deploy", help="register prefect.yaml's control deployments and automations"
    )
    reconcile = commands.add_parser("reconcile", help="repair drift between DB and Prefect")
    reconcile.add_argument("--dry-run", action="store_true", help="only report the drift")
    reconcile.add_argument(
        "--changed",
        action="store_true",
        help="compare only what changed since the last pass began (default: every connector)",
    )
    token = commands.add_parser("token", help="mint a development JWT (HS256 secret)")
    token.add_argument("--sub", required=True, help="who the token is for (the audit actor)")
    token.add_argument(
        "--scope", action="append", default=[], help=f"{READ} or {WRITE}; repeat for more"
    )
    token.add_argument(
        "--project", action="append", type=int, default=[], help="limit to a project id; repeat"
    )
    token.add_argument("--hours", type=float, default=24, help="lifetime (default: 24)")
    for name, help_ in (
        ("plan", "show what `apply` would change, and where Prefect drifted (exit 2: changes)"),
        ("apply", "make the file's changes, each an audited call of the API"),
    ):
        command = commands.add_parser(name, help=help_, description=_AS_CODE_HELP)
        command.add_argument("-f", "--file", required=True, type=Path, help="the YAML file")
        command.add_argument(
            "--prune", action="store_true", help="delete what the file's projects hold and it lacks"
        )
        command.add_argument("--json", action="store_true", help="answer in JSON")
    export = commands.add_parser(
        "export", help="write today's state as a file for `plan` and `apply`"
    )
    export.add_argument("-o", "--output", type=Path, help="the file (default: standard output)")
    export.add_argument(
        "--project", action="append", default=[], help="only this project; repeat for more"
    )
    args = parser.parse_args(argv)
    if args.command in _AS_CODE:
        sys.exit(_as_code(args))
    if args.command in _WITHOUT_PREFECT:
        _run(args)
        return
    # Prefect read its settings at import. Without an API URL it would start a temporary server
    # on ~/.prefect that knows none of the stack's deployments: point it at the stack's instead.
    url = _prefect_api_url(get_settings())
    with temporary_settings({PREFECT_API_URL: url, PREFECT_SERVER_EPHEMERAL_ENABLED: False}):
        _run(args)


_AS_CODE_HELP = (
    "Through the REST API at CONTROL_PLANE_API_URL with CONTROL_PLANE_API_TOKEN. Exit status: "
    "0 nothing to change (plan) or all applied (apply), 2 changes planned, 1 an error."
)


def _as_code(args: argparse.Namespace) -> int:
    """`plan`, `apply` or `export`; the exit status."""
    settings = get_settings()
    token = settings.api_token.get_secret_value() if settings.api_token else None
    api = as_code.Api(settings.resolved_api_url, token)
    try:
        if args.command == "export":
            text = as_code.export(api, args.project)
            if args.output:
                args.output.write_text(text)
            else:
                print(text, end="")
            return 0
        planned = as_code.plan(api, load(args.file, os.environ), prune=args.prune)
        if args.command == "plan":
            print(json.dumps(planned.public(), indent=2) if args.json else as_code.render(planned))
            return 2 if planned.changes else 0
        applied = as_code.apply(api, planned)
        if args.json:
            print(json.dumps({"plan": planned.public(), **applied.public()}, indent=2))
        else:
            print(as_code.render(planned))
            public = applied.public()
            for title in public["applied"]:
                print(f"applied: {title}")
            if applied.failed is not None:
                print(f"failed: {public['failed']['step']}: {applied.error}", file=sys.stderr)
                for title in public["notApplied"]:
                    print(f"not applied: {title}", file=sys.stderr)
        return 0 if applied.failed is None else 1
    except (ManifestError, as_code.ApiError, OSError) as error:
        problems = error.problems if isinstance(error, ManifestError) else [f"error: {error}"]
        if getattr(args, "json", False):
            print(json.dumps({"errors": problems}, indent=2))
        print("\n".join(problems), file=sys.stderr)
        return 1
    finally:
        api.close()


def _run(args: argparse.Namespace) -> None:
    if args.command == "up":
        up(args.profile)
    elif args.command == "token":
        print(
            mint(
                settings=get_settings(),
                sub=args.sub,
                scopes=args.scope or [READ, WRITE],
                projects=args.project,
                hours=args.hours,
            )
        )
    elif args.command == "reconcile":
        rows = asyncio.run(
            reconcile_connectors(dry_run=args.dry_run, full=not args.changed, actor="cli")
        )
        for row in rows:
            print(f"{row['action']:<8} {row['deployment']:<24} {row['differences']}")
        print(f"{len(rows)} {'found' if args.dry_run else 'repaired'}")
    elif args.command == "deploy":
        for name in asyncio.run(bootstrap.deploy_control_flows()):
            print(f"deployed {name}")
    elif args.command == "rotate-key":
        rotate_key()
    else:
        migrate()


if __name__ == "__main__":
    main()
