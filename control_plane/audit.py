"""Labels on control flow runs, so the Prefect UI reads as an audit log.

Every attempt is labelled, refused ones too: a control flow calls `label_run` before anything
can fail, and `label_refused` covers the one failure that comes earlier still, parameters
that Prefect's engine refuses before the flow's body runs.
"""

import inspect
from collections.abc import Callable, Coroutine
from typing import Any

from prefect import Flow
from prefect.client.schemas.objects import FlowRun, State
from prefect.context import FlowRunContext

from control_plane.deployments import MANAGED_TAG
from control_plane.orchestrator import prefect_client

ACTOR_PREFIX = "actor:"

FailureHook = Callable[[Flow[..., Any], FlowRun, State], Coroutine[Any, Any, None]]


def actor_tag(actor: str) -> str:
    return f"{ACTOR_PREFIX}{actor}"


async def _label(run: FlowRun, *, actor: str, name: str, connector_id: int | None) -> None:
    # Prefect replaces a run's tags on update: keep the deployment's (and any earlier label's).
    tags = {*run.tags, MANAGED_TAG, actor_tag(actor)}
    if connector_id is not None:
        tags.add(f"connector:{connector_id}")
    async with prefect_client() as client:
        await client.update_flow_run(run.id, name=name, tags=sorted(tags))
    run.name, run.tags = name, sorted(tags)


async def label_run(*, actor: str, name: str, connector_id: int | None = None) -> None:
    """Name the current flow run for a person and tag it with the actor and the connector."""
    context = FlowRunContext.get()
    assert context is not None and context.flow_run is not None, "call inside a flow run"
    await _label(context.flow_run, actor=actor, name=name, connector_id=connector_id)


def _known_id(value: Any) -> int | None:
    """A connector id from raw parameters, as Prefect's validation would have read it."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return None


def label_refused(action: str) -> FailureHook:
    """An `on_failure` hook that labels a run which failed before its body could.

    Prefect's engine validates a run's parameters before the body runs and, when they fail,
    sets the run Failed, which calls this hook (`AsyncFlowRunEngine.begin_run`, then
    `set_state` and `call_hooks`). The run is named `<action> <id>: invalid parameters` from
    its raw parameters, with the actor they name or the flow's default. A run its body labelled
    already has its actor tag and is left alone, so the hook makes no Prefect call then, and
    none at all on success.
    """

    async def label_if_unlabelled(flow: Flow[..., Any], flow_run: FlowRun, state: State) -> None:
        if any(tag.startswith(ACTOR_PREFIX) for tag in flow_run.tags):
            return
        parameters = flow_run.parameters
        actor = parameters.get("actor")
        if not isinstance(actor, str):
            actor = inspect.signature(flow.fn).parameters["actor"].default
        connector_id = _known_id(parameters.get("connector_id"))
        subject = action if connector_id is None else f"{action} {connector_id}"
        await _label(
            flow_run, actor=actor, name=f"{subject}: invalid parameters", connector_id=connector_id
        )

    return label_if_unlabelled


__all__ = ["actor_tag", "label_refused", "label_run"]
