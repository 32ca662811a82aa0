"""What the API shows of stored rows that need more than their fields: sources and
destinations with their secrets masked, a connector's state with its ETag.

Connectors need no such step: their overrides mask themselves in JSON (models/connector.py).
"""

import hashlib

from control_plane.connectors import DEFAULT_STREAM, Kind, mask_secrets
from control_plane.crud import Endpoint
from models import EndpointPublic, StatePublic, SyncState
from models.sync import StreamState


def endpoint_public(kind: Kind, endpoint: Endpoint) -> EndpointPublic:
    public = EndpointPublic.model_validate(endpoint)
    public.config = mask_secrets(kind, endpoint.config)
    return public


def state_public(state: SyncState | None) -> StatePublic:
    """A connector's state: its one stream's cursor, null before any was saved."""
    if state is None:
        return StatePublic(streams=[StreamState(stream=DEFAULT_STREAM)])
    stream = StreamState(stream=DEFAULT_STREAM, cursor=state.cursor, updated_at=state.updated_at)
    return StatePublic(streams=[stream])


def state_etag(state: StatePublic) -> str:
    """The state's ETag: a hash of what it shows, so every saved cursor or reset changes it."""
    return f'"{hashlib.sha256(state.model_dump_json().encode()).hexdigest()[:20]}"'


__all__ = ["endpoint_public", "state_etag", "state_public"]
