"""SQLModel tables and the API's request and response bodies. No I/O here."""

from models.catalog import (
    DefinedDestination,
    DefinedSource,
    EndpointCreate,
    EndpointPublic,
    EndpointsPublic,
    EndpointUpdate,
    Project,
    ProjectCreate,
    ProjectPublic,
    ProjectsPublic,
    ProjectUpdate,
    TypePublic,
    TypesPublic,
)
from models.connector import (
    Connector,
    ConnectorCreate,
    ConnectorPublic,
    ConnectorsPublic,
    ConnectorUpdate,
    TriggerRequest,
    TriggerResult,
)
from models.sync import RunPublic, RunsPublic, SyncRun, SyncState

__all__ = [
    "Connector",
    "ConnectorCreate",
    "ConnectorPublic",
    "ConnectorUpdate",
    "ConnectorsPublic",
    "DefinedDestination",
    "DefinedSource",
    "EndpointCreate",
    "EndpointPublic",
    "EndpointUpdate",
    "EndpointsPublic",
    "Project",
    "ProjectCreate",
    "ProjectPublic",
    "ProjectUpdate",
    "ProjectsPublic",
    "RunPublic",
    "RunsPublic",
    "SyncRun",
    "SyncState",
    "TriggerRequest",
    "TriggerResult",
    "TypePublic",
    "TypesPublic",
]
