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
from models.check import CheckPublic, ConnectionCheck
from models.connector import (
    Connector,
    ConnectorContext,
    ConnectorCreate,
    ConnectorPublic,
    ConnectorsPublic,
    ConnectorUpdate,
    DriftPublic,
    TriggerRequest,
    TriggerResult,
)
from models.history import HistoryEntry, HistoryPublic
from models.plan import CatalogPlan, ConnectorPlan
from models.schedule import ScheduledRun, SchedulePreview, SchedulePreviewRequest
from models.sync import IdempotencyKey, RunPublic, RunsPublic, SyncRun, SyncState

__all__ = [
    "CatalogPlan",
    "CheckPublic",
    "ConnectionCheck",
    "Connector",
    "ConnectorContext",
    "ConnectorCreate",
    "ConnectorPlan",
    "ConnectorPublic",
    "ConnectorUpdate",
    "ConnectorsPublic",
    "DefinedDestination",
    "DefinedSource",
    "DriftPublic",
    "EndpointCreate",
    "EndpointPublic",
    "EndpointUpdate",
    "EndpointsPublic",
    "HistoryEntry",
    "HistoryPublic",
    "IdempotencyKey",
    "Project",
    "ProjectCreate",
    "ProjectPublic",
    "ProjectUpdate",
    "ProjectsPublic",
    "RunPublic",
    "RunsPublic",
    "SchedulePreview",
    "SchedulePreviewRequest",
    "ScheduledRun",
    "SyncRun",
    "SyncState",
    "TriggerRequest",
    "TriggerResult",
    "TypePublic",
    "TypesPublic",
]
