"""What the API shows of stored rows that need more than their fields: sources and
destinations with their secrets masked, a connector's state with its ETag.

Connectors need no such step: their overrides mask themselves in JSON (models/connector.py).
"""

import hashlib

from control_plane.connectors import Kind, mask_secrets
from control_plane.crud import Endpoint, stream_names
from models import Connector, EndpointPublic, StatePublic, SyncState
from models.sync import StreamState


def endpoint_public(kind: Kind, endpoint: Endpoint) -> EndpointPublic:
    public = EndpointPublic.model_validate(endpoint)
    public.config = mask_secrets(kind, endpoint.config)
    return public


def state_public(connector: Connector, states: dict[str, SyncState]) -> StatePublic:
    """A connector's state: each stream it moves with its cursor, null before one was saved."""
    names = stream_names(connector)
    return StatePublic(
        streams=[
            StreamState(stream=name)
            if name not in states
            else StreamState(
                stream=name, cursor=states[name].cursor, updated_at=states[name].updated_at
            )
            for name in names
        ]
    )


def state_etag(state: StatePublic) -> str:
    """The state's ETag: a hash of what it shows, so every saved cursor or reset changes it."""
    return f'"{hashlib.sha256(state.model_dump_json().encode()).hexdigest()[:20]}"'


__all__ = ["endpoint_public", "state_etag", "state_public"]
