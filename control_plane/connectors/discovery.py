"""What a source holds, as streams with the JSON schema of their records: from the database's
own catalog where there is one, from a sample of records otherwise.

A sample's types are the values' own (a driver's datetimes, decimals, UUIDs), and for strings
(every value of a CSV) what they read as: integers, numbers, booleans, ISO 8601 dates and
times. A field whose values disagree is the wider type (integer and number: number), or any
type at all; a null anywhere makes it nullable.
"""

import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, time
from decimal import Decimal
from typing import Any
from uuid import UUID

# A field's JSON schema type by the Python type of its values: (type, format).
_TYPES: list[tuple[type, tuple[str, str | None]]] = [
    (bool, ("boolean", None)),
    (int, ("integer", None)),
    (float, ("number", None)),
    (Decimal, ("number", None)),
    (datetime, ("string", "date-time")),
    (date, ("string", "date")),
    (time, ("string", "time")),
    (UUID, ("string", "uuid")),
    (dict, ("object", None)),
    (list, ("array", None)),
    (str, ("string", None)),
]
# What a string reads as, tried in order.
_STRINGS = [
    (re.compile(r"-?\d{1,18}"), ("integer", None)),
    (re.compile(r"-?(\d+\.\d*|\.\d+|\d+)([eE][-+]?\d+)?"), ("number", None)),
    (re.compile(r"(?i)true|false"), ("boolean", None)),
    (re.compile(r"\d{4}-\d{2}-\d{2}"), ("string", "date")),
    (
        re.compile(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})?"),
        ("string", "date-time"),
    ),
]
# Types a cursor can be: values that only grow as rows are added, if the source is so kind.
_CURSOR_KINDS = {("integer", None), ("number", None), ("string", "date-time"), ("string", "date")}

Kind = tuple[str, str | None]


@dataclass
class Stream:
    """One stream of a source: its records' JSON schema, its key, and the fields that could
    be its cursor."""

    name: str
    json_schema: dict[str, Any]
    namespace: str | None = None
    primary_key: list[str] = field(default_factory=list)
    cursor_candidates: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def kind_of(value: Any) -> Kind | None:
    """The JSON schema type and format of a value; None for a null or an empty string."""
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return None  # a CSV's empty field
        return next((kind for pattern, kind in _STRINGS if pattern.fullmatch(text)), _TYPES[-1][1])
    return next((kind for python_type, kind in _TYPES if isinstance(value, python_type)), None)


def kind_of_type(python_type: type) -> Kind | None:
    """The JSON schema type and format of a Python type's values; None when JSON has none."""
    return next((kind for known, kind in _TYPES if issubclass(python_type, known)), None)


def property_schema(kinds: set[Kind | None]) -> dict[str, Any]:
    """The JSON schema of a field whose values are of `kinds` (None: a null)."""
    known = {kind for kind in kinds if kind is not None}
    if known == {("integer", None), ("number", None)}:
        known = {("number", None)}
    if len(known) != 1:
        return {}  # any type
    [(type_name, format_name)] = known
    schema: dict[str, Any] = {"type": [type_name, "null"] if None in kinds else type_name}
    if format_name:
        schema["format"] = format_name
    return schema


def record_schema(properties: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return {"type": "object", "properties": properties}


def cursor_candidates(properties: dict[str, dict[str, Any]]) -> list[str]:
    """The fields whose type a cursor can have."""
    found = []
    for name, schema in properties.items():
        types = schema.get("type")
        type_name = (
            next((t for t in types if t != "null"), None) if isinstance(types, list) else types
        )
        if (type_name, schema.get("format")) in _CURSOR_KINDS:
            found.append(name)
    return found


def sampled(name: str, records: Iterable[dict[str, Any]]) -> Stream:
    """A stream as a sample of its records shows it."""
    kinds: dict[str, set[Kind | None]] = {}
    for record in records:
        for key, value in record.items():
            kinds.setdefault(key, set()).add(kind_of(value))
    properties = {key: property_schema(found) for key, found in kinds.items()}
    return Stream(
        name=name,
        json_schema=record_schema(properties),
        cursor_candidates=cursor_candidates(properties),
    )


__all__ = [
    "Stream",
    "cursor_candidates",
    "kind_of",
    "kind_of_type",
    "property_schema",
    "record_schema",
    "sampled",
]
