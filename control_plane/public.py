"""What the API shows of stored sources and destinations: the same fields, secrets masked.

Connectors need no such step: their overrides mask themselves in JSON (models/connector.py).
"""

from control_plane.connectors import Kind, mask_secrets
from control_plane.crud import Endpoint
from models import EndpointPublic


def endpoint_public(kind: Kind, endpoint: Endpoint) -> EndpointPublic:
    public = EndpointPublic.model_validate(endpoint)
    public.config = mask_secrets(kind, endpoint.config)
    return public


__all__ = ["endpoint_public"]
