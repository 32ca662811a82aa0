"""What the API and the flows show of stored rows: the same fields, with secrets masked."""

from control_plane.connectors import Kind, mask_secrets
from control_plane.crud import Endpoint
from models import Connector, ConnectorPublic, EndpointPublic


def connector_public(connector: Connector) -> ConnectorPublic:
    public = ConnectorPublic.model_validate(connector)
    public.source_config_override = mask_secrets("source", connector.source_config_override)
    public.destination_config_override = mask_secrets(
        "destination", connector.destination_config_override
    )
    return public


def endpoint_public(kind: Kind, endpoint: Endpoint) -> EndpointPublic:
    public = EndpointPublic.model_validate(endpoint)
    public.config = mask_secrets(kind, endpoint.config)
    return public


__all__ = ["connector_public", "endpoint_public"]
