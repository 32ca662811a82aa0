"""The control plane's exceptions, raised deep down and mapped to HTTP once, in `api/errors.py`.

```
ControlPlaneError
├── Unauthorized        401  no valid bearer token
├── Forbidden           403  the token lacks the scope
├── NotFound            404  an id that does not exist
├── Conflict            409  the request clashes with what is stored
│   └── DeploymentMissing    409  Prefect lost a deployment the database points to
├── PreconditionFailed  412  If-Match names a version the connector no longer has
├── InvalidInput        422  a value that cannot be used, naming the field
└── Unavailable         503  a dependency is down
    ├── PrefectUnavailable   503  Prefect's API cannot be reached or keeps failing
    ├── PrefectRejected      502  Prefect answered, but refused the request
    │   └── WorkPoolMissing  502  the work pool the deployments run on is not in Prefect
    ├── DatabaseUnavailable  503  the control plane's database cannot be reached
    └── SecretKeyError       503  the key file is missing, unreadable or lacks a stored key
```
"""

from collections.abc import Sequence


class ControlPlaneError(Exception):
    """Base of every error the control plane raises on purpose."""

    status_code = 500

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class Unauthorized(ControlPlaneError):
    status_code = 401


class Forbidden(ControlPlaneError):
    status_code = 403


class NotFound(ControlPlaneError):
    status_code = 404


class Conflict(ControlPlaneError):
    status_code = 409


class DeploymentMissing(Conflict):
    pass


class PreconditionFailed(ControlPlaneError):
    status_code = 412


class InvalidInput(ControlPlaneError):
    """A value that cannot be used, and where it is.

    `field` is a dotted path whose first segment is a model field's own (snake_case) name; the
    rest, if any, are keys within that field's value as the client gave them (a config's keys,
    a stream's name): `source_config_override.api_key`. `problems` are what is wrong at paths
    within the field's value (a config its type refused), or `message` says it. Only the first
    segment is ever renamed: the API shows it as its bodies name it (`api/errors.py`).
    """

    status_code = 422

    def __init__(
        self, field: str, message: str = "", *, problems: Sequence[tuple[Sequence[str], str]] = ()
    ) -> None:
        self.field, self.message = field, message
        self.problems = [(tuple(path), problem) for path, problem in problems]
        super().__init__(self.explain(field))

    def explain(self, field: str) -> str:
        """The detail, naming the field `field` (the API gives its own name for it)."""
        if self.problems:
            return f"{field}: " + "; ".join(
                f"{'.'.join([field, *path])}: {problem}" for path, problem in self.problems
            )
        return f"{field}: {self.message}"


class Unavailable(ControlPlaneError):
    status_code = 503


class PrefectUnavailable(Unavailable):
    pass


class PrefectRejected(Unavailable):
    status_code = 502


class WorkPoolMissing(PrefectRejected):
    # A 5xx, not a 409 like DeploymentMissing: no request of the caller's fixes it, and no
    # reconcile does; the operator's setup (the pool, or CONTROL_PLANE_WORK_POOL) does.
    pass


class DatabaseUnavailable(Unavailable):
    pass


class SecretKeyError(Unavailable):
    """The key file is missing or unreadable, or lacks the key a stored value was encrypted with."""


__all__ = [
    "Conflict",
    "ControlPlaneError",
    "DatabaseUnavailable",
    "DeploymentMissing",
    "Forbidden",
    "InvalidInput",
    "NotFound",
    "PreconditionFailed",
    "PrefectRejected",
    "PrefectUnavailable",
    "SecretKeyError",
    "Unauthorized",
    "Unavailable",
    "WorkPoolMissing",
]
