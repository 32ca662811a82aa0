"""Labels on control flow runs, so the Prefect UI reads as an audit log."""

from prefect.context import FlowRunContext

from control_plane.deployments import MANAGED_TAG
from control_plane.orchestrator import prefect_client


def actor_tag(actor: str) -> str:
    return f"actor:{actor}"


async def label_run(*, actor: str, name: str, connector_id: int | None = None) -> None:
    """Name the current flow run for a person and tag it with the actor and the connector."""
    context = FlowRunContext.get()
    assert context is not None and context.flow_run is not None, "call inside a flow run"
    run = context.flow_run
    tags = {*run.tags, MANAGED_TAG, actor_tag(actor)}
    if connector_id is not None:
        tags.add(f"connector:{connector_id}")
    async with prefect_client() as client:
        await client.update_flow_run(run.id, name=name, tags=sorted(tags))
    run.tags = sorted(tags)


__all__ = ["actor_tag", "label_run"]
