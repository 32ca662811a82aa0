"""Labels and artifacts on control flow runs, so the Prefect UI reads as an audit log, and
that log read back for the API.

Every attempt is labelled, refused ones too: a control flow calls `label_run` before anything
can fail (or, when its name waits for an id, runs in `labelled_when_refused` until then), and
`label_refused` covers the one failure that comes earlier still, parameters that Prefect's
engine refuses before the flow's body runs. A run that changed a connector
publishes the fields it changed, before and after (`publish_changes`); a refused one what it
was asked and why it was refused. Both are table artifacts: the UI shows them as tables, and
their rows are data that `history` reads back as they were written.
"""

import inspect
import json
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any
from uuid import UUID

from prefect import Flow, get_run_logger
from prefect.client.schemas.actions import ArtifactCreate
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    FlowFilter,
    FlowFilterName,
    FlowRunFilter,
    FlowRunFilterTags,
)
from prefect.client.schemas.objects import FlowRun, State
from prefect.client.schemas.sorting import FlowRunSort
from prefect.context import FlowRunContext
from prefect.flows import FlowStateHook

from control_plane.connectors import MASK, Kind, mask_secrets
from control_plane.deployments import MANAGED_TAG
from control_plane.errors import Unavailable
from control_plane.orchestrator import PREFECT_PAGE, prefect_client
from control_plane.runs import connector_tag
from models import HistoryEntry
from models.history import AskedField
from models.plan import FieldChange

ACTOR_PREFIX = "actor:"


def actor_tag(actor: str) -> str:
    return f"{ACTOR_PREFIX}{actor}"


async def _label(run: FlowRun, *, actor: str, name: str, connector_id: int | None) -> None:
    # Prefect replaces a run's tags on update: keep the deployment's (and any earlier label's).
    tags = {*run.tags, MANAGED_TAG, actor_tag(actor)}
    if connector_id is not None:
        tags.add(connector_tag(connector_id))
    async with prefect_client() as client:
        await client.update_flow_run(run.id, name=name, tags=sorted(tags))
    run.name, run.tags = name, sorted(tags)


async def label_run(*, actor: str, name: str, connector_id: int | None = None) -> None:
    """Name the current flow run for a person and tag it with the actor and the connector."""
    await _label(_current_run(), actor=actor, name=name, connector_id=connector_id)


@asynccontextmanager
async def labelled_when_refused(*, actor: str, name: str) -> AsyncIterator[None]:
    """For a flow whose name waits for what it makes (a new connector's id): when the block
    fails before the run was labelled, it is labelled `name`, so a refused attempt reads as
    what was asked, and one that succeeds makes one Prefect call for its label, not two."""
    try:
        yield
    except Exception:
        run = _current_run()
        if not _labelled(run):
            await _label(run, actor=actor, name=name, connector_id=None)
        raise


def _current_run() -> FlowRun:
    context = FlowRunContext.get()
    assert context is not None and context.flow_run is not None, "call inside a flow run"
    return context.flow_run


def _labelled(run: FlowRun) -> bool:
    return any(tag.startswith(ACTOR_PREFIX) for tag in run.tags)


def _known_id(value: Any) -> int | None:
    """A connector id from raw parameters, as Prefect's validation would have read it."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return None


def label_refused(action: str) -> FlowStateHook[..., Any]:
    """An `on_failure` hook that labels a run which failed before its body could.

    Prefect's engine validates a run's parameters before the body runs and, when they fail,
    sets the run Failed, which calls this hook (`AsyncFlowRunEngine.begin_run`, then
    `set_state` and `call_hooks`). The run is named `<action> <id>: invalid parameters` from
    its raw parameters, with the actor they name or the flow's default. A run its body labelled
    already has its actor tag and is left alone. Either way it publishes what the run was asked
    and why it was refused: one Prefect call per refusal, none on success.
    """

    async def label_if_unlabelled(flow: Flow[..., Any], flow_run: FlowRun, state: State) -> None:
        if not _labelled(flow_run):
            parameters = flow_run.parameters
            actor = parameters.get("actor")
            if not isinstance(actor, str):
                actor = inspect.signature(flow.fn).parameters["actor"].default
            connector_id = _known_id(parameters.get("connector_id"))
            subject = action if connector_id is None else f"{action} {connector_id}"
            await _label(
                flow_run,
                actor=actor,
                name=f"{subject}: invalid parameters",
                connector_id=connector_id,
            )
        await _publish_refusal(flow_run, state)

    return label_if_unlabelled


_CHANGED = "What this run changed: each field before and after, secrets masked."
_REFUSED = "Refused: "
# A flow's parameters that say what was asked, field by field: the spec or the changes.
_ASKED_MODELS = ("spec", "changes")


async def publish_changes(changes: Sequence[FieldChange]) -> list[dict[str, Any]]:
    """The current run's changes as its artifact: each field before and after, as the API
    shows them (secrets masked; `secretChanged` where the masks hide a change). Returns the
    same changes as the JSON its events carry.

    Called once the change is committed: when Prefect fails to take the artifact, the change
    stands and says so in the run's log, rather than answer a failure for what was done."""
    run = _current_run()
    rows = [
        {
            "field": change.field,
            "before": json.dumps(change.before),
            "after": json.dumps(change.after),
            "secretChanged": change.secret_changed,
        }
        for change in changes
    ]
    try:
        await _publish(run.id, rows, _CHANGED)
    except Unavailable:
        get_run_logger().warning("the artifact of this run's changes was not published")
    return [change.model_dump(mode="json", by_alias=True) for change in changes]


async def _publish_refusal(flow_run: FlowRun, state: State) -> None:
    """A refused run's artifact: what it was asked and why it was refused.

    Its parameters as Prefect keeps them: the API's runs mask their overrides already, but a
    run from the Prefect UI's form keeps what was typed, so overrides are masked here too.
    Fields of the spec or the changes that are null are left out: the API's runs carry every
    field, asked or not.
    """
    parameters = flow_run.parameters
    asked = {k: v for k, v in parameters.items() if k not in _ASKED_MODELS}
    for model in _ASKED_MODELS:
        if isinstance(parameters.get(model), dict):
            asked |= {k: v for k, v in parameters[model].items() if v is not None}
    rows = [
        {"field": field, "asked": json.dumps(_masked(field, value), default=str)}
        for field, value in asked.items()
    ]
    await _publish(flow_run.id, rows, f"{_REFUSED}{state.message or state.name}")


_OVERRIDES: dict[str, Kind] = {
    name: kind
    for kind in ("source", "destination")
    for name in (f"{kind}ConfigOverride", f"{kind}_config_override")
}


def _masked(field: str, value: Any) -> Any:
    if field not in _OVERRIDES:
        return value
    return mask_secrets(_OVERRIDES[field], value) if isinstance(value, dict) else MASK


async def _publish(flow_run_id: UUID, rows: list[dict[str, Any]], description: str) -> None:
    async with prefect_client() as client:
        await client.create_artifact(
            ArtifactCreate(
                type="table",
                data=json.dumps(rows),
                flow_run_id=flow_run_id,
                description=description,
            )
        )


async def history(
    connector_id: int, *, flows: Sequence[str], limit: int, offset: int
) -> tuple[list[HistoryEntry], int]:
    """The connector's control runs of `flows`, newest first, with what each changed or was
    refused; and how many there are."""
    flow_filter = FlowFilter(name=FlowFilterName(any_=list(flows)))
    flow_run_filter = FlowRunFilter(tags=FlowRunFilterTags(all_=[connector_tag(connector_id)]))
    async with prefect_client() as client:
        # One page of Prefect's at most: it serves no more in one request.
        found = await client.read_flow_runs(
            flow_filter=flow_filter,
            flow_run_filter=flow_run_filter,
            sort=FlowRunSort.EXPECTED_START_TIME_DESC,
            limit=min(limit, PREFECT_PAGE),
            offset=offset,
        )
        count = await client.count_flow_runs(
            flow_filter=flow_filter, flow_run_filter=flow_run_filter
        )
        artifacts = (
            await client.read_artifacts(
                limit=PREFECT_PAGE,
                artifact_filter=ArtifactFilter(
                    flow_run_id=ArtifactFilterFlowRunId(any_=[run.id for run in found])
                ),
            )
            if found
            else []
        )
        names = {
            flow.id: flow.name
            for flow in await client.read_flows(
                flow_filter=FlowFilter(name=FlowFilterName(any_=list(flows)))
            )
        }
    # Ours only: another client may publish artifacts on these runs too.
    read: dict[UUID, _Read] = {}
    for artifact in artifacts:
        if artifact.flow_run_id is None:
            continue
        try:
            read[artifact.flow_run_id] = _read(artifact)
        except (KeyError, TypeError, ValueError):
            continue
    entries = [
        _entry(run, names.get(run.flow_id, ""), read.get(run.id, (None, [], []))) for run in found
    ]
    return entries, count


_Read = tuple[str | None, list[FieldChange], list[AskedField]]  # refused, changes, asked


def _read(artifact: Any) -> _Read:
    """What one of our artifacts says; KeyError, TypeError or ValueError for any other."""
    description = artifact.description or ""
    if artifact.type != "table" or not description.startswith((_CHANGED, _REFUSED)):
        raise ValueError("not an artifact of the control plane's")
    rows = json.loads(artifact.data)
    if description.startswith(_REFUSED):
        asked = [AskedField(field=row["field"], value=json.loads(row["asked"])) for row in rows]
        return description.removeprefix(_REFUSED), [], asked
    changes = [
        FieldChange(
            field=row["field"],
            before=json.loads(row["before"]),
            after=json.loads(row["after"]),
            secret_changed=bool(row.get("secretChanged")),
        )
        for row in rows
    ]
    return None, changes, []


def _entry(run: FlowRun, action: str, read: _Read) -> HistoryEntry:
    refused, changes, asked = read
    actors = [tag.removeprefix(ACTOR_PREFIX) for tag in run.tags if tag.startswith(ACTOR_PREFIX)]
    return HistoryEntry(
        flow_run_id=run.id,
        action=action,
        name=run.name,
        actor=actors[0] if actors else None,
        at=run.start_time or run.expected_start_time,
        state=run.state_type.value if run.state_type else "UNKNOWN",
        changes=changes,
        refused=refused,
        asked=asked,
    )


__all__ = ["actor_tag", "history", "label_refused", "label_run", "publish_changes"]
