"""The built-in source and destination types, named by pyproject's entry points."""

from control_plane.connectors.files import CsvSource, JsonlDestination, JsonlSource
from control_plane.connectors.http import HttpSource
from control_plane.connectors.sql import SqlDestination, SqlSource

__all__ = [
    "CsvSource",
    "HttpSource",
    "JsonlDestination",
    "JsonlSource",
    "SqlDestination",
    "SqlSource",
]
