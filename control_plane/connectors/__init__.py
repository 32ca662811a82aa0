"""Source and destination types: plugins found through the `control_plane.connectors` entry points.

A type is a class with a `kind` ("source" or "destination"), a `name` (what `type` says in a
defined source or destination) and a pydantic `Config` model that its `config` must fit.
Third-party packages register their own types under the same entry-point group.
"""

from functools import lru_cache
from importlib.metadata import entry_points
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic.alias_generators import to_camel

from control_plane.errors import InvalidInput

ENTRY_POINT_GROUP = "control_plane.connectors"

Kind = Literal["source", "destination"]


class TypeConfig(BaseModel):
    """Base of every type's config: camelCase keys, unknown keys refused."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


class ConnectorType:
    """A registered source or destination type."""

    kind: ClassVar[Kind]
    name: ClassVar[str]
    Config: ClassVar[type[TypeConfig]]


class Source(ConnectorType):
    kind = "source"


class Destination(ConnectorType):
    kind = "destination"


@lru_cache
def registered_types() -> dict[tuple[Kind, str], type[ConnectorType]]:
    """Every type that an installed package registers, by (kind, name)."""
    types: dict[tuple[Kind, str], type[ConnectorType]] = {}
    for entry_point in entry_points(group=ENTRY_POINT_GROUP):
        connector_type = entry_point.load()
        types[(connector_type.kind, connector_type.name)] = connector_type
    return types


def get_type(kind: Kind, name: str) -> type[ConnectorType]:
    """The registered type, or a 422 listing the known ones."""
    try:
        return registered_types()[(kind, name)]
    except KeyError:
        known = ", ".join(sorted(n for k, n in registered_types() if k == kind))
        raise InvalidInput("type", f"unknown {kind} type {name!r}; known: {known}") from None


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """`base` with `override` laid over it; nested dicts merge, anything else is replaced."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def validate_config(kind: Kind, name: str, config: dict[str, Any], *, field: str) -> TypeConfig:
    """`config` checked against the type's model; a 422 naming the first bad key otherwise."""
    try:
        return get_type(kind, name).Config.model_validate(config)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join([field, *map(str, e['loc'])])}: {e['msg']}" for e in error.errors()
        )
        raise InvalidInput(field, problems) from None


__all__ = [
    "ConnectorType",
    "Destination",
    "Kind",
    "Source",
    "TypeConfig",
    "deep_merge",
    "get_type",
    "registered_types",
    "validate_config",
]
