"""Optional JWT bearer auth: who is calling, with which scopes, in which projects.

With `CONTROL_PLANE_AUTH_ENABLED=true` every /api/v1 route needs a token signed with the
HS256 secret, the RS256 public key, or a key of the JWKS URL; `exp` and `sub` are required,
`iss` and `aud` are checked when set. `sub` becomes the actor on audit tags. Scopes (the
`scope` claim, space-separated, or a `scopes` list): `connectors:read` for reads,
`connectors:write` for changes (it implies read). A `projects` claim limits the caller to
those projects: the others look as if they did not exist.
"""

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any

import jwt
from fastapi import Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from control_plane.errors import Forbidden, Unauthorized
from control_plane.settings import Settings, get_settings
from models.base import MAX_INT

READ = "connectors:read"
WRITE = "connectors:write"
ANONYMOUS = "anonymous"
_READ_METHODS = {"GET", "HEAD", "OPTIONS"}
_READ_POSTS = {"/api/v1/schedules/preview"}  # a POST for its body; it changes nothing

bearer = HTTPBearer(auto_error=False, description="A JWT; see the README's Auth section.")


@dataclass(frozen=True)
class Caller:
    """Who is calling: the actor on audit tags, and the projects they may see (None: all)."""

    actor: str
    projects: frozenset[int] | None = None

    def sees(self, project_id: int) -> bool:
        return self.projects is None or project_id in self.projects


@lru_cache
def _jwks_client(url: str) -> jwt.PyJWKClient:
    return jwt.PyJWKClient(url, cache_keys=True)


def _key(token: str, settings: Settings) -> tuple[Any, list[str]]:
    if settings.auth_jwks_url:
        return _jwks_client(settings.auth_jwks_url).get_signing_key_from_jwt(token).key, ["RS256"]
    if settings.auth_jwt_public_key:
        return settings.auth_jwt_public_key, ["RS256"]
    if settings.auth_jwt_secret:
        return settings.auth_jwt_secret.get_secret_value(), ["HS256"]
    raise Unauthorized(
        "auth is enabled but no key is configured: set CONTROL_PLANE_AUTH_JWT_SECRET, "
        "CONTROL_PLANE_AUTH_JWT_PUBLIC_KEY or CONTROL_PLANE_AUTH_JWKS_URL"
    )


def decode(token: str, settings: Settings) -> dict[str, Any]:
    """The token's claims, or 401 saying what is wrong with it."""
    try:
        key, algorithms = _key(token, settings)
        return jwt.decode(
            token,
            key,
            algorithms=algorithms,
            audience=settings.auth_audience,
            issuer=settings.auth_issuer,
            options={"require": ["exp", "sub"], "verify_aud": bool(settings.auth_audience)},
        )
    except jwt.PyJWTError as error:
        raise Unauthorized(f"invalid bearer token: {error}") from None


def _scopes(claims: dict[str, Any]) -> set[str]:
    scope = claims.get("scope", "")
    listed = claims.get("scopes", [])
    return set(scope.split() if isinstance(scope, str) else []) | set(
        listed if isinstance(listed, list) else []
    )


def _projects(claims: dict[str, Any]) -> frozenset[int] | None:
    if "projects" not in claims:
        return None
    projects = claims["projects"]
    # Exactly ints: `int()` would read "12" as projects 1 and 2, and `True` is an int too. Out
    # of the ids' range, the database could not even compare them.
    if not isinstance(projects, list) or not all(
        type(project) is int and 1 <= project <= MAX_INT for project in projects
    ):
        raise Unauthorized(
            "invalid bearer token: `projects` must be a list of project ids "
            f"(integers from 1 to {MAX_INT})"
        )
    return frozenset(projects)


def caller_of(request: Request, credentials: HTTPAuthorizationCredentials | None) -> Caller:
    """The caller of a request; 401 without a valid token, 403 without the scope."""
    settings = get_settings()
    if not settings.auth_enabled:
        return Caller(actor=ANONYMOUS)
    if credentials is None:
        raise Unauthorized("this API needs `Authorization: Bearer <JWT>`")
    claims = decode(credentials.credentials, settings)
    reads = request.method in _READ_METHODS or request.url.path in _READ_POSTS
    needed = READ if reads else WRITE
    granted = _scopes(claims)
    if needed not in granted and not (needed == READ and WRITE in granted):
        raise Forbidden(f"the token lacks the scope {needed!r}")
    return Caller(actor=str(claims["sub"]), projects=_projects(claims))


def mint(
    *, settings: Settings, sub: str, scopes: list[str], projects: list[int], hours: float
) -> str:
    """A development HS256 token signed with the configured secret."""
    if settings.auth_jwt_secret is None:
        raise SystemExit("set CONTROL_PLANE_AUTH_JWT_SECRET to mint tokens")
    claims: dict[str, Any] = {
        "sub": sub,
        "scope": " ".join(scopes),
        "exp": datetime.now(UTC) + timedelta(hours=hours),
    }
    if projects:
        claims["projects"] = projects
    if settings.auth_issuer:
        claims["iss"] = settings.auth_issuer
    if settings.auth_audience:
        claims["aud"] = settings.auth_audience
    return jwt.encode(claims, settings.auth_jwt_secret.get_secret_value(), algorithm="HS256")


__all__ = ["READ", "WRITE", "Caller", "bearer", "caller_of", "decode", "mint"]
