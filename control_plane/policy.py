"""The data plane's trust boundary: which files, databases and HTTP hosts a project reaches.

Every path, database URL and HTTP URL a tenant puts in a config passes through here twice:
when the config is saved (its type's validator raises, and the API answers 422 naming the
field) and on the worker right where the type opens the file or connection (the run fails
before anything is read or written). Each check resolves first (realpath, DNS), checks what
was resolved, then hands back exactly that to use.

- Files: inside `<root>/<project id>/` of one of the operator's file roots, never in the
  control plane's data dir, key file, `.env`, Prefect's home or either database's file.
- Hosts: public addresses, and non-public ones (loopback, private, link-local, reserved)
  only where `CONTROL_PLANE_ALLOWED_HOSTS` names them; never the control plane's own API or
  database, nor Prefect's API or database, whatever the spelling.
"""

import getpass
import ipaddress
import os
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
from prefect.settings import get_current_settings
from pydantic import ValidationInfo
from sqlalchemy.engine import URL, make_url

from control_plane.settings import Settings, get_settings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

POSTGRES_PORT = 5432
# Connection parameters a tenant may set in a PostgreSQL URL's query. The rest would bypass
# the host check (`host`, `hostaddr`, `service`) or read files on the worker (`passfile`,
# `sslcert`, `sslkey`, `sslrootcert`, `sslcrl`).
POSTGRES_QUERY = frozenset({"sslmode", "connect_timeout", "application_name"})
# A path where no file can ever be created: libpq skips a passfile that does not exist.
_NO_FILE = "/proc/self/no-such-file"
# The backends a URL may name, by the names SQLAlchemy knows them by.
DATABASE_BACKENDS = {"postgresql": "postgresql", "postgres": "postgresql", "sqlite": "sqlite"}
_GLOB = frozenset("*?[")
_HOST_NAME = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*")


def is_glob(value: str) -> bool:
    """Whether a path has a wildcard in it."""
    return bool(_GLOB & set(value))


class Refused(ValueError):
    """What a config names lies outside the project's reach; the message says why."""


# What a check that needs the project's folders and hosts says without them.
UNSCOPED = "is checked only within a project's scope"


@dataclass(frozen=True)
class Allowed:
    """An entry of the allow list: a host name, an address or a network, and maybe a port."""

    name: str | None
    network: IPNetwork | None
    port: int | None

    @classmethod
    def parse(cls, entry: str) -> "Allowed":
        """`host`, `address`, `network/bits`, each optionally with `:port` (`[v6]:port`)."""
        text = entry.strip().lower()
        bad = ValueError(f"{entry!r} is no host name, address or network with an optional port")
        host, port = text, ""
        if text.startswith("["):
            host, _, rest = text[1:].partition("]")
            if rest and not rest.startswith(":"):
                raise bad
            port = rest[1:]
        elif text.count(":") == 1:
            host, _, port = text.partition(":")
        if not host or (port and not (port.isdigit() and 0 < int(port) < 65536)):
            raise bad
        number = int(port) if port else None
        try:
            return cls(None, ipaddress.ip_network(host, strict=False), number)
        except ValueError:
            if not _HOST_NAME.fullmatch(host.rstrip(".")):
                raise bad from None
            return cls(host.rstrip("."), None, number)

    def admits(self, host: str, address: IPAddress, port: int) -> bool:
        if self.port is not None and self.port != port:
            return False
        if self.network is not None:
            return address in self.network
        return host.lower().rstrip(".") == self.name


@dataclass(frozen=True)
class Service:
    """An address and port of our own (the API, Prefect's API, a database server)."""

    addresses: frozenset[IPAddress]
    port: int

    def includes(self, address: IPAddress, port: int) -> bool:
        return port == self.port and any(_same_host(address, own) for own in self.addresses)


@dataclass(frozen=True)
class Database:
    """A database of our own: a server and a database name, or a SQLite file."""

    service: Service | None
    name: str | None
    file: Path | None


@dataclass(frozen=True)
class Scope:
    """What one project's connectors may reach; built by `scope_for`, tests build their own."""

    folders: tuple[Path, ...]
    allowed: tuple[Allowed, ...] = ()
    forbidden_paths: tuple[Path, ...] = ()
    services: tuple[tuple[str, Service], ...] = ()
    databases: tuple[tuple[str, Database], ...] = ()

    # Files

    def path(self, value: str) -> Path:
        """The real path a file config names: relative to the project's folder, or absolute
        inside it. The file need not exist yet."""
        if "\x00" in value:
            raise Refused("contains a NUL character")
        if not self.folders:
            raise Refused("no file root is configured (CONTROL_PLANE_FILE_ROOTS)")
        joined = Path(self.folders[0], value)  # an absolute `value` replaces the folder
        resolved = Path(os.path.realpath(joined))
        folder = next((f for f in self.folders if resolved.is_relative_to(f)), None)
        if folder is None:
            raise Refused(
                f"{value!r} is outside the project's folder; name a file relative to it "
                f"(it is {self.folders[0]})"
            )
        for forbidden in self.forbidden_paths:
            if resolved.is_relative_to(forbidden) and not folder.is_relative_to(forbidden):
                raise Refused(f"{value!r} is a file of the control plane or of Prefect")
        for label, database in self.databases:
            if database.file is not None and _same_file(resolved, database.file):
                raise Refused(f"{value!r} is {label}")
        return resolved

    def pattern(self, value: str) -> str:
        """A glob (or a plain path) inside the project's folder: the part before the first
        wildcard is checked as a path, and no `..` may follow it."""
        if "\x00" in value:
            raise Refused("contains a NUL character")
        parts = Path(value).parts
        static = next((i for i, part in enumerate(parts) if is_glob(part)), len(parts))
        if ".." in parts[static:]:
            raise Refused(f"{value!r}: no `..` after a wildcard")
        if static == len(parts):
            return str(self.path(value))
        base = self.path(str(Path(*parts[:static])) if static else ".")
        return str(base.joinpath(*parts[static:]))

    def opened(self, path: Path, descriptor: int) -> None:
        """Check, after opening, that the file really opened is the one checked (a symlink
        swapped in between the check and the open would show here)."""
        # Linux names an open file's real path here; without it the check cannot be made.
        link = f"/proc/self/fd/{descriptor}"
        if not os.path.exists(link) or Path(os.path.realpath(link)) != path:
            os.close(descriptor)
            raise Refused(f"{path} changed between its check and its opening")

    # Hosts

    def address(self, host: str, port: int) -> IPAddress:
        """The address to connect to for `host`: every address it resolves to must be allowed."""
        addresses = resolve(host, port)
        for address in addresses:
            self.check_address(host, address, port)
        return addresses[0]

    def check_address(self, host: str, address: IPAddress, port: int) -> None:
        for label, service in self.services:
            if service.includes(address, port):
                raise Refused(f"{host}:{port} is {label}")
        if _public(address) or any(entry.admits(host, address, port) for entry in self.allowed):
            return
        raise Refused(
            f"{host} is a {_kind(address)} address, which connectors may not reach unless the "
            "operator allows it (CONTROL_PLANE_ALLOWED_HOSTS)"
        )

    # HTTP

    def http_url(self, value: str) -> tuple[httpx.URL, IPAddress]:
        """An http(s) URL whose host is allowed, and the address to send its request to."""
        try:
            url = httpx.URL(value)
        except httpx.InvalidURL as error:
            raise Refused(f"is not a URL: {error}") from None
        if url.scheme not in ("http", "https") or not url.host:
            raise Refused("is not an http:// or https:// URL with a host")
        return url, self.address(url.host, port_of(url))

    def transport(self) -> httpx.BaseTransport:
        """An HTTP transport that checks every request it sends: redirects and next pages too."""
        return _CheckedTransport(self)

    # Databases

    def database(self, value: str) -> URL:
        """The database URL to connect with: SQLite inside the project's folder, or PostgreSQL
        on an allowed host, never a database of the control plane or of Prefect."""
        try:
            url = make_url(value)
        except Exception:  # SQLAlchemy raises ArgumentError, ValueError or others
            raise Refused("is not a database URL, e.g. postgresql://user@host:5432/db") from None
        backend = DATABASE_BACKENDS.get(url.get_backend_name())
        if backend is None:
            raise Refused(
                f"{url.get_backend_name()!r} databases are not supported; use postgresql or sqlite"
            )
        if backend == "sqlite":
            return self._sqlite(url)
        return self._postgres(url)

    def _sqlite(self, url: URL) -> URL:
        if url.query:
            raise Refused("a sqlite URL takes no query parameters")
        if not url.database or url.database == ":memory:":
            raise Refused("a sqlite URL names a file, e.g. sqlite:///warehouse.db")
        return url.set(drivername="sqlite", database=str(self.path(url.database)))

    def _postgres(self, url: URL) -> URL:
        if extra := sorted(set(url.query) - POSTGRES_QUERY):
            raise Refused(
                f"query parameter {', '.join(extra)} is not allowed in a PostgreSQL URL; "
                f"allowed: {', '.join(sorted(POSTGRES_QUERY))}"
            )
        host = url.host or ""
        if not host or host.startswith("/") or "," in host:
            raise Refused("a PostgreSQL URL names one host, e.g. postgresql://user@host/db")
        port = url.port or POSTGRES_PORT
        address = self.address(host, port)
        name = _postgres_name(url)
        for label, database in self.databases:
            if (
                database.service is not None
                and database.service.includes(address, port)
                and database.name == name
            ):
                raise Refused(f"{host}:{port}/{name} is {label}")
        # psycopg connects to exactly the address checked (`host` stays for TLS), as exactly
        # the user and database checked, with nothing of the worker's own: no PG* variables
        # (an empty password stops PGPASSWORD), no ~/.pgpass, no client certificate, no
        # Kerberos ticket.
        query = {
            **url.query,
            "hostaddr": str(address),
            "passfile": _NO_FILE,
            "sslcertmode": "disable",
            "gssencmode": "disable",
        }
        return url.set(
            drivername="postgresql+psycopg",
            query=query,
            database=name,
            username=url.username or getpass.getuser(),
            password=url.password or "",
        )


def port_of(url: httpx.URL) -> int:
    """The port an http(s) URL names, or its scheme's."""
    return url.port or (443 if url.scheme == "https" else 80)


class _CheckedTransport(httpx.BaseTransport):
    """Sends each request to the address its host was checked to resolve to, so DNS cannot
    answer differently between the check and the connection; TLS still verifies the name."""

    def __init__(self, scope: Scope) -> None:
        self.scope = scope
        # One pool per host name: a connection opened (and its certificate verified) for one
        # name is never reused for another name on the same address.
        self.pools: dict[str, httpx.HTTPTransport] = {}

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        url, address = self.scope.http_url(str(request.url))
        pool = self.pools.get(url.host)
        if pool is None:
            pool = self.pools[url.host] = httpx.HTTPTransport(trust_env=False)
        request.url = url.copy_with(host=str(address))
        request.extensions = {**request.extensions, "sni_hostname": url.host}
        try:
            return pool.handle_request(request)
        finally:
            # Relative links and redirects resolve against the URL as the tenant wrote it.
            request.url = url

    def close(self) -> None:
        for pool in self.pools.values():
            pool.close()


def resolve(host: str, port: int) -> list[IPAddress]:
    """Every address `host` resolves to, IPv4-mapped IPv6 addresses as IPv4."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as error:
        raise Refused(f"{host} cannot be resolved: {error}") from None
    addresses: list[IPAddress] = []
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%")[0])
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
            address = address.ipv4_mapped
        if address not in addresses:
            addresses.append(address)
    return addresses


# IPv6 ranges that carry an IPv4 address (NAT64, 6to4, IPv4-compatible) or are deprecated
# site-local: Python 3.11 calls some of them global, but they can reach private IPv4 space.
_EMBEDDING = tuple(
    ipaddress.ip_network(network)
    for network in ("64:ff9b::/96", "64:ff9b:1::/48", "2002::/16", "::/96", "fec0::/10")
)


def _public(address: IPAddress) -> bool:
    return address.is_global and not any(address in network for network in _EMBEDDING)


def _kind(address: IPAddress) -> str:
    if address.is_loopback:
        return "loopback"
    if address.is_link_local:
        return "link-local"
    if address.is_private:
        return "private"
    return "non-public"


def _local(address: IPAddress) -> bool:
    """An address of this machine: loopback, unspecified, or one it can bind a socket to (an
    interface's address, which reaches our services as well as 127.0.0.1 does)."""
    if address.is_loopback or address.is_unspecified:
        return True
    family = socket.AF_INET if address.version == 4 else socket.AF_INET6
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((str(address), 0))
        except OSError:
            return False
    return True


def _same_host(address: IPAddress, own: IPAddress) -> bool:
    """Two addresses of one host: equal, or both this machine (any loopback spelling)."""
    return address == own or (_local(address) and _local(own))


def _same_file(path: Path, other: Path) -> bool:
    """The same file, also through a hard link; a path that does not exist is no file yet."""
    try:
        return path.samefile(other)
    except OSError:
        return path == other


def _postgres_name(url: URL) -> str:
    # libpq's defaults: the database is named after the user, the user after the OS user.
    return url.database or url.username or getpass.getuser()


def _service(host: str, port: int) -> Service:
    try:
        addresses = frozenset(resolve(host, port))
    except Refused:
        addresses = frozenset()
    return Service(addresses, port)


def _own_database(url: str) -> Database | None:
    try:
        parsed = make_url(url)
    except Exception:  # a setting we cannot read names nothing a tenant could reach
        return None
    if parsed.get_backend_name() == "sqlite":
        if not parsed.database or parsed.database == ":memory:":
            return None
        return Database(None, None, Path(os.path.realpath(parsed.database)))
    host = parsed.host or str(parsed.query.get("host") or "")
    if not host or host.startswith("/"):
        host = "127.0.0.1"  # a Unix socket: the server on this machine
    return Database(_service(host, parsed.port or POSTGRES_PORT), _postgres_name(parsed), None)


def _boundary(settings: Settings) -> Scope:
    """What every project's scope shares, from the settings of this process: all but folders."""
    prefect = get_current_settings()
    forbidden = [settings.data_dir, prefect.home, Path(".env"), settings.resolved_secret_key_file]
    services: list[tuple[str, Service]] = [
        ("the control plane's API", _service(settings.api_host, settings.api_port)),
        ("Prefect's API", _service(settings.prefect_host, settings.prefect_port)),
        # Whole: every database of the PostgreSQL `up` may run for Prefect is Prefect's.
        ("Prefect's PostgreSQL", _service("127.0.0.1", settings.prefect_postgres_port)),
    ]
    if prefect.api.url:
        api = httpx.URL(prefect.api.url)
        services.append(("Prefect's API", _service(api.host, port_of(api))))
    databases = [
        ("the control plane's database", settings.resolved_database_url),
        ("Prefect's database", settings.prefect_database_url),
        ("Prefect's database", prefect.server.database.connection_url),
    ]
    return Scope(
        folders=(),
        allowed=tuple(Allowed.parse(entry) for entry in settings.allowed_hosts),
        forbidden_paths=tuple(Path(os.path.realpath(path)) for path in forbidden),
        services=tuple(services),
        databases=tuple(
            (label, found)
            for label, url in databases
            if url and (found := _own_database(str(_secret(url)))) is not None
        ),
    )


def _secret(value: Any) -> Any:
    return value.get_secret_value() if hasattr(value, "get_secret_value") else value


def scope_for(project_id: int, settings: Settings | None = None) -> Scope:
    """What the project's connectors may reach under the settings of this process: its folder
    under each file root, and what every project shares."""
    settings = settings or get_settings()
    folders = tuple(
        Path(os.path.realpath(root / str(project_id))) for root in settings.resolved_file_roots
    )
    return replace(_boundary(settings), folders=folders)


def _scope_of(info: ValidationInfo) -> Scope:
    """The scope a config is validated in (pydantic's validation context)."""
    if not isinstance(info.context, Scope):
        raise Refused(UNSCOPED)
    return info.context


def checked(check: Callable[["Scope", str], object]) -> Callable[[str, ValidationInfo], str]:
    """A pydantic after-validator that runs `check(scope, value)` and keeps the value: a type
    calls the same check again where it opens the file or connection, and uses its answer."""

    def validate(value: str, info: ValidationInfo) -> str:
        check(_scope_of(info), value)
        return value

    return validate


__all__ = [
    "Allowed",
    "Refused",
    "Scope",
    "checked",
    "is_glob",
    "port_of",
    "scope_for",
]
