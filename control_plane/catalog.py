"""The catalog's entries (projects, defined sources and destinations) as the API shows them,
and what a change does to them field by field: what a dry run answers and a change publishes."""

from typing import Any

from pydantic.alias_generators import to_camel

from control_plane.connectors import Kind
from control_plane.crud import ENDPOINT_TABLES, Endpoint
from control_plane.public import endpoint_public
from models import EndpointPublic, Project, ProjectPublic
from models.plan import CatalogKind, FieldChange, field_changes

Row = Project | Endpoint
Seen = tuple[dict[str, Any], dict[str, Any]]  # a row as shown, and unmasked; {} for none
KINDS: dict[type, Kind] = {table: kind for kind, table in ENDPOINT_TABLES.items()}
# Set by the write itself, never asked for: not a change.
_BOOKKEEPING = frozenset({"id", "createdAt", "updatedAt"})


def kind_of(row: Row) -> CatalogKind:
    return "project" if isinstance(row, Project) else KINDS[type(row)]


def public(row: Row) -> ProjectPublic | EndpointPublic:
    """The row as the API answers it, secrets masked."""
    if isinstance(row, Project):
        return ProjectPublic.model_validate(row)
    return endpoint_public(KINDS[type(row)], row)


def seen(row: Row | None) -> Seen:
    """The row as the API shows it (secrets masked), and unmasked: compared, never answered."""
    if row is None:
        return {}, {}
    shown = public(row)
    # A source lacks a destination's fields (`maxConcurrentRuns`): None, as it shows them.
    unmasked = {to_camel(name): getattr(row, name, None) for name in type(shown).model_fields}
    return shown.model_dump(mode="json", by_alias=True), unmasked


def changes(before: Seen, after: Seen) -> list[FieldChange]:
    """Field by field, as the API shows them; a secret that changes shows as `secretChanged`."""
    (old, old_values), (new, new_values) = before, after
    return field_changes(shown=(old, new), unmasked=(old_values, new_values), skipped=_BOOKKEEPING)
