"""Latency of each connector action through HTTP, next to what it cannot cost less than.

    .venv/bin/python -m bench.actions [--rounds 10] [--postgres]

Starts a Prefect server and the API (uvicorn, loopback) on free ports with fresh databases
(SQLite, or the local PostgreSQL with --postgres), then times each action `rounds` times three
ways, interleaved (their order rotates every round) so that noise hits them alike:

- http: the API's route, which runs the action's control flow in the API process;
- flow: the same control flow awaited in this process, without HTTP and uvicorn;
- direct: the database and Prefect calls that flow makes, without a flow run (no label_run).

flow and direct use one pair of Prefect clients for the whole run, so neither pays for building
a client. Next to them: an empty async flow run with Prefect's defaults (a new client pair per
run: the bookkeeping the target allows for), the same on the reused clients, and the naive way,
a sync flow, empty and around the direct create. The target: http p50 <= 1.2 x (direct p50 +
empty flow p50) for every action. Prints a table and writes bench/results/actions.json.
"""

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Iterator
from contextlib import asynccontextmanager, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import anyio.from_thread
import anyio.to_thread
import httpx
from prefect import flow
from prefect.client.orchestration import PrefectClient, SyncPrefectClient, get_client
from prefect.context import AsyncClientContext, SyncClientContext
from prefect.events.worker import EventsWorker
from prefect.logging.handlers import APILogWorker
from sqlmodel.ext.asyncio.session import AsyncSession

from bench._seed import Catalog, make_catalog, unique
from bench._stack import local_stack, percentile, write_results
from control_plane import crud, deployments, events, runs
from control_plane.audit import actor_tag
from control_plane.db import get_engine, session_scope, write_lock
from control_plane.settings import get_settings
from flows.lifecycle import create_connector, delete_connector, trigger_connector, update_connector
from models import Connector, ConnectorCreate, ConnectorUpdate

ACTIONS = ("create", "reschedule", "trigger", "deactivate", "activate", "delete")
CHANGES = {  # the PATCH body of each update action, and the event its flow emits
    "reschedule": ({"schedule": "0 */6 * * *"}, events.RESCHEDULED),
    "deactivate": ({"isActive": False}, events.DEACTIVATED),
    "activate": ({"isActive": True}, events.ACTIVATED),
}
TARGET_FACTOR = 1.2
ACTOR = "bench"


class _Way(Protocol):
    async def create(self, body: dict[str, Any]) -> int: ...
    async def update(self, connector_id: int, action: str) -> None: ...
    async def trigger(self, connector_id: int) -> None: ...
    async def delete(self, connector_id: int) -> None: ...


class _Http:
    """The API's routes; the control flow runs in the API process."""

    def __init__(self, api: httpx.AsyncClient) -> None:
        self.api = api

    async def _call(self, method: str, path: str, status: int, body: Any = None) -> Any:
        response = await self.api.request(method, path, json=body)
        assert response.status_code == status, (method, path, response.text)
        return response.json() if response.content else None

    async def create(self, body: dict[str, Any]) -> int:
        return (await self._call("POST", "/connectors", 201, body))["id"]

    async def update(self, connector_id: int, action: str) -> None:
        await self._call("PATCH", f"/connectors/{connector_id}", 200, CHANGES[action][0])

    async def trigger(self, connector_id: int) -> None:
        await self._call("POST", f"/connectors/{connector_id}/trigger", 200)

    async def delete(self, connector_id: int) -> None:
        await self._call("DELETE", f"/connectors/{connector_id}", 204)


class _InProcess:
    """The same control flows awaited in this process: the flow without HTTP and uvicorn."""

    async def create(self, body: dict[str, Any]) -> int:
        spec = ConnectorCreate.model_validate(body)
        return (await create_connector(spec=spec, actor=ACTOR)).id

    async def update(self, connector_id: int, action: str) -> None:
        changes = ConnectorUpdate.model_validate(CHANGES[action][0])
        await update_connector(connector_id=connector_id, changes=changes, actor=ACTOR)

    async def trigger(self, connector_id: int) -> None:
        await trigger_connector(connector_id=connector_id, actor=ACTOR)

    async def delete(self, connector_id: int) -> None:
        await delete_connector(connector_id=connector_id, actor=ACTOR)


async def _spec(session: AsyncSession, connector: Connector) -> deployments.DeploymentSpec | None:
    if not connector.is_active:
        return None
    context = await crud.context_of(session=session, connector=connector)
    return deployments.desired(connector, context)


class _Direct:
    """Each control flow's database and Prefect calls, in its order, without a flow run."""

    async def create(self, body: dict[str, Any]) -> int:
        spec = ConnectorCreate.model_validate(body)
        async with (
            write_lock(f"create:{spec.project_id}:{spec.name}"),
            session_scope() as session,
        ):
            connector = await crud.add_connector(session=session, spec=spec)
            connector.prefect_deployment_id = await deployments.apply(
                None, None, await _spec(session, connector)
            )
            await session.commit()
        events.emit(events.CREATED, connector, actor=ACTOR)
        assert connector.id is not None
        return connector.id

    async def update(self, connector_id: int, action: str) -> None:
        body, event = CHANGES[action]
        async with write_lock(f"connector:{connector_id}"), session_scope() as session:
            connector = await crud.get_connector(
                session=session, connector_id=connector_id, for_update=True
            )
            before = await _spec(session, connector)
            changes = ConnectorUpdate.model_validate(body)
            await crud.change_connector(session=session, connector=connector, changes=changes)
            connector.prefect_deployment_id = await deployments.apply(
                connector.prefect_deployment_id, before, await _spec(session, connector)
            )
            await session.commit()
        events.emit(event, connector, actor=ACTOR)

    async def trigger(self, connector_id: int) -> None:
        async with session_scope() as session:
            connector = await crud.get_connector(session=session, connector_id=connector_id)
        assert connector.prefect_deployment_id is not None
        flow_run_id = await deployments.run_now(
            connector.prefect_deployment_id, tags=[runs.MANUAL_TAG, actor_tag(ACTOR)]
        )
        events.emit(events.TRIGGERED, connector, actor=ACTOR, flowRunId=str(flow_run_id))

    async def delete(self, connector_id: int) -> None:
        async with write_lock(f"connector:{connector_id}"), session_scope() as session:
            connector = await crud.get_connector(
                session=session, connector_id=connector_id, for_update=True
            )
            before = await _spec(session, connector)
            await crud.remove_connector(session=session, connector=connector)
            await deployments.apply(connector.prefect_deployment_id, before, None)
            await session.commit()
        events.emit(events.DELETED, connector, actor=ACTOR)


@flow(name="bench-empty")
async def empty_flow() -> None:
    """Nothing: what an async flow run's own bookkeeping costs."""


@flow(name="bench-empty-sync")
def empty_sync_flow() -> None:
    """Nothing, the naive way: a sync flow run joins its heartbeat thread on exit."""


@flow(name="bench-create-sync")
def create_in_sync_flow(body: dict[str, Any]) -> int:
    """The direct create inside a sync flow, run from a worker thread as FastAPI would."""
    return anyio.from_thread.run(_Direct().create, body)


@dataclass(frozen=True)
class _Clients:
    client: PrefectClient
    sync_client: SyncPrefectClient

    @contextmanager
    def reused(self) -> Iterator[None]:
        """Prefect's engine and `prefect_client()` take these instead of building new ones."""
        with (
            AsyncClientContext.model_construct(client=self.client),
            SyncClientContext.model_construct(client=self.sync_client),
        ):
            yield


@asynccontextmanager
async def _open_clients() -> AsyncIterator[_Clients]:
    with get_client(sync_client=True) as sync_client:
        async with get_client() as client:
            yield _Clients(client, sync_client)


Timings = dict[str, dict[str, list[float]]]  # way -> action -> seconds


def _timings() -> Timings:
    return defaultdict(lambda: defaultdict(list))


async def _timed(call: Awaitable[Any], into: list[float]) -> Any:
    start = time.perf_counter()
    result = await call
    into.append(time.perf_counter() - start)
    return result


async def _act(way: _Way, action: str, connector_id: int | None, catalog: Catalog) -> int:
    if action == "create":
        return await way.create(catalog.connector(name=unique("bench")))
    assert connector_id is not None
    if action == "trigger":
        await way.trigger(connector_id)
    elif action == "delete":
        await way.delete(connector_id)
    else:
        await way.update(connector_id, action)
    return connector_id


async def _measure(api_url: str, catalog: Catalog, rounds: int) -> Timings:
    """Seconds per way and action."""
    timings = _timings()
    async with httpx.AsyncClient(base_url=api_url, timeout=60) as api, _open_clients() as clients:
        ways: dict[str, _Way] = {"http": _Http(api), "flow": _InProcess(), "direct": _Direct()}
        for round_ in range(rounds + 1):
            # Round 0 warms every path up; its timings go to a list nobody reads.
            kept = timings if round_ else _timings()
            shift = round_ % len(ways)
            order = [*ways][shift:] + [*ways][:shift]
            ids: dict[str, int | None] = dict.fromkeys(ways)
            for action in ACTIONS:
                if action == "delete":  # a read, without a flow run, for comparison
                    await _timed(api.get(f"/connectors/{ids['http']}"), kept["http"]["get"])
                for name in order:
                    with nullcontext() if name == "http" else clients.reused():
                        step = _act(ways[name], action, ids[name], catalog)
                        ids[name] = await _timed(step, kept[name][action])
                await _timed(empty_flow(), kept["empty"]["defaults"])
                with clients.reused():
                    await _timed(empty_flow(), kept["empty"]["reused clients"])
            empty_sync = anyio.to_thread.run_sync(empty_sync_flow)
            await _timed(empty_sync, kept["naive"]["empty sync flow"])
            body = catalog.connector(name=unique("bench"))
            create = anyio.to_thread.run_sync(create_in_sync_flow, body)
            connector_id = await _timed(create, kept["naive"]["create in a sync flow"])
            with clients.reused():
                await ways["direct"].delete(connector_id)
    await get_engine().dispose()
    return timings


def _figures(values: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(statistics.median(values) * 1000, 1),
        "p95_ms": round(percentile(values, 0.95) * 1000, 1),
        "n": len(values),
    }


def _report(timings: Timings) -> dict[str, Any]:
    empty = _figures(timings["empty"]["defaults"])
    reused = _figures(timings["empty"]["reused clients"])
    actions = {}
    for action in ACTIONS:
        http, in_process, direct = (
            _figures(timings[way][action]) for way in ("http", "flow", "direct")
        )
        floor = direct["p50_ms"] + empty["p50_ms"]
        actions[action] = {
            "http": http,
            "flow_in_process": in_process,
            "direct": direct,
            "target_ms": round(TARGET_FACTOR * floor, 1),
            "ratio": round(http["p50_ms"] / floor, 2),
            "met": http["p50_ms"] <= TARGET_FACTOR * floor,
            # Against an empty flow run on reused clients: what remains beyond the bare run.
            "ratio_reused_clients": round(
                http["p50_ms"] / (direct["p50_ms"] + reused["p50_ms"]), 2
            ),
        }
    return {
        "target": f"http p50 <= {TARGET_FACTOR} x (direct p50 + empty async flow p50)",
        "target_factor": TARGET_FACTOR,
        "actions": actions,
        "get": _figures(timings["http"]["get"]),
        "empty_async_flow": empty,
        "empty_async_flow_reused_clients": reused,
        "naive_sync_flow": {name: _figures(v) for name, v in timings["naive"].items()},
    }


def _print(report: dict[str, Any]) -> None:
    columns = ("http p50", "http p95", "flow p50", "direct p50", "empty p50", "target", "ratio")
    print(f"{'action':<12}" + "".join(f"{c:>11}" for c in columns) + f"{'met':>5}{'ratio*':>8}")
    empty = report["empty_async_flow"]["p50_ms"]
    for action, row in report["actions"].items():
        cells = (
            row["http"]["p50_ms"],
            row["http"]["p95_ms"],
            row["flow_in_process"]["p50_ms"],
            row["direct"]["p50_ms"],
            empty,
            row["target_ms"],
            row["ratio"],
        )
        met = "yes" if row["met"] else "no"
        print(
            f"{action:<12}"
            + "".join(f"{c:>11}" for c in cells)
            + f"{met:>5}{row['ratio_reused_clients']:>8}"
        )
    print(
        f"(ms; ratio = http p50 / (direct p50 + empty p50), met: <= {TARGET_FACTOR}; "
        "ratio* the same with the empty flow on reused clients)\n"
    )
    lines = {
        "get through HTTP (no flow run)": report["get"],
        "empty async flow run": report["empty_async_flow"],
        "empty async flow run, reused clients": report["empty_async_flow_reused_clients"],
        **{f"naive: {name}": row for name, row in report["naive_sync_flow"].items()},
    }
    for name, row in lines.items():
        print(f"{name:<38}p50 {row['p50_ms']:>8} ms   p95 {row['p95_ms']:>8} ms   n {row['n']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument(
        "--postgres", action="store_true", help="both databases on the local PostgreSQL"
    )
    args = parser.parse_args()
    database = "postgresql" if args.postgres else "sqlite"
    with (
        tempfile.TemporaryDirectory() as tmp,
        local_stack(Path(tmp), postgres=args.postgres) as stack,
    ):
        # The direct baseline and the in-process flows use the API's database and work pool.
        os.environ.update({k: v for k, v in stack.env.items() if k.startswith("CONTROL_PLANE_")})
        get_settings.cache_clear()
        catalog = make_catalog(stack.api, stack.files)
        timings = asyncio.run(_measure(str(stack.api.base_url), catalog, args.rounds))
        # Send this process's last run logs and events while Prefect still listens.
        APILogWorker.drain_all(timeout=5)
        EventsWorker.drain_all(timeout=5)
    report = _report(timings)
    _print(report)
    write_results(
        "actions",
        prefect_database=database,
        control_plane_database=database,
        rounds=args.rounds,
        **report,
    )


if __name__ == "__main__":
    main()
