"""Field titles a person reads, in the API's schemas and the Prefect UI's run forms: "Project
ID", "Time zone", "Active", where pydantic would title the camelCase alias ("Projectid")."""

from typing import Any

_TITLES = {"is_active": "Active", "timezone": "Time zone"}
_WORDS = {"id": "ID", "ids": "IDs", "url": "URL", "api": "API", "utc": "UTC", "json": "JSON"}


def field_title(name: str, _info: Any = None) -> str:
    """The title of a snake_case field; pydantic's `field_title_generator`."""
    if name in _TITLES:
        return _TITLES[name]
    words = [_WORDS.get(word, word) for word in name.split("_")]
    return " ".join([words[0][:1].upper() + words[0][1:], *words[1:]])


__all__ = ["field_title"]
