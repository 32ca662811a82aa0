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
    status_code = 422

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


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
