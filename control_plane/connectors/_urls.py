"""The secret parts of a URL: its password (or, for http, a user name alone, which is a token),
and the values of query parameters whose name looks secret. Found in the URL as written,
without decoding it, so masking or restoring them changes nothing else of the URL."""

from urllib.parse import unquote_plus, urlsplit

MASK = "********"

# A query parameter is secret when its name contains one of these (api_key, X-Amz-Signature,
# private_token, client_secret, pwd, ...): masking too much is safe, too little is not.
_SECRET_WORDS = ("token", "key", "secret", "sig", "pass", "pwd", "auth", "cred", "session", "jwt")
_PASSWORD, _USER = ":password", ":user"


def _secret_name(name: str) -> bool:
    lowered = unquote_plus(name).lower()
    return any(word in lowered for word in _SECRET_WORDS) or lowered == "code"


def _query_keys(query: str) -> list[tuple[str | None, str]]:
    """Each part of the query: its key among the secrets (None: not secret) and its text."""
    seen: dict[str, int] = {}
    keys: list[tuple[str | None, str]] = []
    for part in query.split("&"):
        name, equals, _ = part.partition("=")
        if equals and _secret_name(name):
            seen[name] = seen.get(name, 0) + 1
            keys.append((f"{name}#{seen[name]}", part))
        else:
            keys.append((None, part))
    return keys


def secrets_of(url: str) -> dict[str, str]:
    """The secret parts of `url`, by a key that names where each one is."""
    parts = urlsplit(url)
    found: dict[str, str] = {}
    userinfo, at, _ = parts.netloc.rpartition("@")
    if at:
        user, colon, password = userinfo.partition(":")
        if colon:
            found[_PASSWORD] = password
        elif parts.scheme in ("http", "https") and user:
            found[_USER] = user
    for key, part in _query_keys(parts.query):
        if key is not None:
            found[key] = part.partition("=")[2]
    return found


def with_secrets(url: str, secrets: dict[str, str]) -> str:
    """`url` with the secret parts that `secrets` names set to its values."""
    parts = urlsplit(url)
    userinfo, at, host = parts.netloc.rpartition("@")
    netloc = parts.netloc
    if at:
        user, colon, password = userinfo.partition(":")
        if colon:
            netloc = f"{user}:{secrets.get(_PASSWORD, password)}@{host}"
        elif _USER in secrets:
            netloc = f"{secrets[_USER]}@{host}"
    query = "&".join(
        part if key is None or key not in secrets else f"{part.partition('=')[0]}={secrets[key]}"
        for key, part in _query_keys(parts.query)
    )
    return parts._replace(netloc=netloc, query=query if parts.query else "").geturl()


def mask_url(url: str) -> str:
    """`url` with every secret part replaced by `MASK`."""
    secrets = secrets_of(url)
    return with_secrets(url, dict.fromkeys(secrets, MASK)) if secrets else url


def origin(url: str) -> tuple[str, str | None, int | None, str | None]:
    """Where `url` sends its secrets: scheme, host, port, and a user name that is no secret."""
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    user = None if _USER in secrets_of(url) else parts.username
    return parts.scheme.lower(), parts.hostname, port, user


__all__ = ["MASK", "mask_url", "origin", "secrets_of", "with_secrets"]
