"""Which documented path a request's path is an instance of, from the app's OpenAPI document:
the template a metric is labelled with, and the methods a 405's `Allow` lists."""

import re
from functools import lru_cache
from typing import Any

from fastapi import FastAPI


@lru_cache(maxsize=256)
def _pattern(template: str) -> re.Pattern[str]:
    return re.compile(re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(template)))


def _matching(app: FastAPI, path: str) -> list[tuple[str, dict[str, Any]]]:
    """The documented templates `path` fits, the most literal only: `/connectors/check` is
    that path, not `/connectors/{connector_id}`."""
    matches = [
        (template, operations)
        for template, operations in app.openapi()["paths"].items()
        if _pattern(template).fullmatch(path)
    ]
    fewest = min((template.count("{") for template, _ in matches), default=0)
    return [match for match in matches if match[0].count("{") == fewest]


def template_of(app: FastAPI, path: str) -> str | None:
    """The template `path` is an instance of; None for a path the API does not have."""
    return next((template for template, _ in _matching(app, path)), None)


def methods_of(app: FastAPI, path: str) -> list[str]:
    """The methods documented for `path`, sorted."""
    return sorted(
        {method.upper() for _, operations in _matching(app, path) for method in operations}
    )
