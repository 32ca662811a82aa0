"""Configs at rest: whole JSON columns encrypted with Fernet keys kept outside the database.

- The key file (`CONTROL_PLANE_SECRET_KEY_FILE`, default `<data_dir>/secret.key`, mode 0600)
  holds one urlsafe-base64 Fernet key a line, newest first: the first key encrypts, every key
  decrypts (MultiFernet). `migrate` and `up` create it when missing; the API refuses to start
  without it. A database backup is worth nothing without this file.
- An `EncryptedJSON` column stores `json.dumps(value)` as a Fernet token (AES-128-CBC with an
  HMAC-SHA256): the configs of defined sources and destinations, and the connectors' overrides.
- Each process reads the key file once. A token its keys cannot open makes it read the file
  again, once, if the file changed; before encrypting it checks that the file has not changed.
  So `control-plane rotate-key` (a new key first, every row re-encrypted under it, the
  previous key kept for processes that still write with it) needs no restart of anything.
"""

import fcntl
import hashlib
import hmac
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from sqlalchemy import Column, MetaData, Table, Text, column, select, table, update
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.types import TypeDecorator

from control_plane.errors import SecretKeyError
from control_plane.settings import get_settings

ROTATE_BATCH_SIZE = 500


def _missing(path: Path) -> SecretKeyError:
    return SecretKeyError(
        f"the key file {path} that encrypts stored configs does not exist: "
        "`control-plane migrate` (or `up`) creates it. Every API and worker process of one "
        "database needs the same file (CONTROL_PLANE_SECRET_KEY_FILE)"
    )


@dataclass(frozen=True)
class _KeyRing:
    fernet: MultiFernet
    # (inode, mtime, size) when read: `os.replace` by rotate-key changes the inode.
    stamp: tuple[int, int, int]


_rings: dict[Path, _KeyRing] = {}


def _stamp(path: Path) -> tuple[int, int, int]:
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        raise _missing(path) from None
    return stat.st_ino, stat.st_mtime_ns, stat.st_size


def read_keys(path: Path) -> list[bytes]:
    """The keys of the key file, newest first; a `SecretKeyError` saying what is wrong otherwise."""
    try:
        lines = path.read_bytes().splitlines()
    except FileNotFoundError:
        raise _missing(path) from None
    except OSError as error:
        raise SecretKeyError(f"the key file {path} cannot be read: {error}") from error
    keys = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            Fernet(line.strip())
        except ValueError:
            raise SecretKeyError(
                f"line {number} of the key file {path} is not a Fernet key "
                "(32 bytes, urlsafe base64)"
            ) from None
        keys.append(line.strip())
    if not keys:
        raise SecretKeyError(f"the key file {path} holds no key")
    return keys


def _load(path: Path) -> _KeyRing:
    stamp = _stamp(path)  # before reading: a file replaced meanwhile shows as changed next time
    ring = _KeyRing(MultiFernet([Fernet(key) for key in read_keys(path)]), stamp)
    _rings[path] = ring
    return ring


def _default_key_file() -> Path:
    return get_settings().resolved_secret_key_file


def check_key_file(path: Path | None = None) -> Path:
    """Read the key file (default: the settings'); a `SecretKeyError` saying why it is unusable."""
    path = path or _default_key_file()
    _load(path)
    return path


def _fsync_directory(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


@contextmanager
def _temporary_key_file(path: Path, keys: list[bytes]) -> Iterator[Path]:
    """A file beside `path` holding `keys`, mode 0600 from its creation (O_CREAT|O_EXCL)."""
    descriptor, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    temporary = Path(name)
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(b"".join(key + b"\n" for key in keys))
            file.flush()
            os.fsync(file.fileno())
        yield temporary
    finally:
        temporary.unlink(missing_ok=True)


def ensure_key_file(path: Path) -> Path:
    """Create the key file with a fresh key, mode 0600, unless it exists; return its path.

    Atomic: the complete file appears under its name at once (a hard link, which fails if the
    name exists), so concurrent callers keep one key and no reader sees a half-written file.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        return path
    with _temporary_key_file(path, [Fernet.generate_key()]) as temporary:
        try:
            os.link(temporary, path)
        except FileExistsError:
            return path
    _fsync_directory(path.parent)
    return path


def _write_keys(path: Path, keys: list[bytes]) -> None:
    with _temporary_key_file(path, keys) as temporary:
        os.replace(temporary, path)
    # Rows are re-encrypted under the new key only after this: it must survive a crash.
    _fsync_directory(path.parent)


def encrypt_json(value: Any, *, key_file: Path | None = None) -> str:
    """`value` as JSON, encrypted with the newest key of the key file (default: the settings').

    For SQL written by hand: `UPDATE defined_source SET config = :token` with this token.
    """
    path = key_file or _default_key_file()
    ring = _rings.get(path)
    if ring is None or ring.stamp != _stamp(path):
        ring = _load(path)
    return ring.fernet.encrypt(json.dumps(value).encode()).decode()


def decrypt_json(token: str, *, key_file: Path | None = None) -> Any:
    """The value that `encrypt_json` encrypted, with any key of the key file."""
    return json.loads(_plaintext(key_file or _default_key_file(), token))


def digest_json(value: Any, *, key_file: Path | None = None) -> str:
    """A keyed hash of `value` as JSON (HMAC-SHA256 under the newest key of the key file): equal
    values, equal digests, and without the key file a digest tells nothing of a secret in it.
    A rotation changes every digest."""
    key = read_keys(key_file or _default_key_file())[0]
    return hmac.new(key, json.dumps(value, sort_keys=True).encode(), hashlib.sha256).hexdigest()


# Rows are read far more often than written (a list of 100 connectors opens 300 tokens), and a
# token never changes: open each once (15 us with its JSON), then find it here (2 us). The
# process holds the configs it reads in memory anyway.
@lru_cache(maxsize=4096)
def _plaintext(path: Path, token: str) -> bytes:
    data = token.encode()
    ring = _rings.get(path) or _load(path)
    try:
        return ring.fernet.decrypt(data)
    except InvalidToken:
        pass
    # rotate-key may have put a new key first since this process read the file.
    if ring.stamp != _stamp(path):
        try:
            return _load(path).fernet.decrypt(data)
        except InvalidToken:
            pass
    raise SecretKeyError(
        f"a stored config does not decrypt with any key of {path}: the file lacks the key "
        "that encrypted it (another file, or a key dropped by two rotations since)"
    )


class EncryptedJSON(TypeDecorator[Any]):
    """A JSON value stored as a Fernet token under the settings' key file (module docstring)."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> str | None:
        return None if value is None else encrypt_json(value)

    def process_result_value(self, value: str | None, dialect: Dialect) -> Any:
        return None if value is None else decrypt_json(value)


def encrypted_columns(metadata: MetaData) -> dict[Table, list[Column[Any]]]:
    """The `EncryptedJSON` columns of every table of `metadata`, by table."""
    found: dict[Table, list[Column[Any]]] = {}
    for candidate in metadata.sorted_tables:
        columns = [c for c in candidate.columns if isinstance(c.type, EncryptedJSON)]
        if columns:
            found[candidate] = columns
    return found


@contextmanager
def _rotation_lock(path: Path) -> Iterator[None]:
    # Two rotations at once could each drop the key the other one encrypts with. The lock is
    # on the key file's folder: the file itself is replaced, and a lock file would linger.
    descriptor = os.open(path.parent, os.O_RDONLY)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SecretKeyError(
                f"another rotate-key of {path} is running: let it finish, then run this again"
            ) from None
        yield
    finally:
        os.close(descriptor)


async def _reencrypt(
    engine: AsyncEngine, source: Table, columns: list[Column[Any]], keys: MultiFernet, path: Path
) -> int:
    [key] = source.primary_key.columns
    # Raw tokens: the same table without the type that would decrypt them.
    raw = table(source.name, column(key.name), *(column(c.name, Text) for c in columns))
    names = [c.name for c in columns]
    done, last = 0, None
    while True:
        query = select(raw).order_by(raw.c[key.name]).limit(ROTATE_BATCH_SIZE)
        if last is not None:
            query = query.where(raw.c[key.name] > last)
        async with engine.begin() as connection:
            rows = (await connection.execute(query)).mappings().all()
            for row in rows:
                try:
                    values = {n: keys.rotate(row[n].encode()).decode() for n in names if row[n]}
                except InvalidToken:
                    raise SecretKeyError(
                        f"{source.name} {row[key.name]} does not decrypt with any key of {path}; "
                        "the file keeps every key until all rows are re-encrypted"
                    ) from None
                if not values:
                    continue
                # Only if unchanged since read: a concurrent writer's value (under the new key
                # or the kept previous one) wins over this copy of the old one.
                unchanged = [raw.c[n] == row[n] for n in names]
                changed = await connection.execute(
                    update(raw).where(raw.c[key.name] == row[key.name], *unchanged).values(values)
                )
                done += changed.rowcount
        if len(rows) < ROTATE_BATCH_SIZE:
            return done
        last = rows[-1][key.name]


async def rotate_key(*, engine: AsyncEngine, metadata: MetaData, key_file: Path) -> dict[str, int]:
    """Put a new key first in the key file, re-encrypt every `EncryptedJSON` value of the
    database under it, then keep only the new key and the previous one.

    Until every row is re-encrypted the file keeps all the old keys too, so any process that
    reads it meanwhile opens every row. Returns the rows re-encrypted per table.
    """
    with _rotation_lock(key_file):
        old = read_keys(key_file)
        new = Fernet.generate_key()
        _write_keys(key_file, [new, *old])
        keys = MultiFernet([Fernet(key) for key in (new, *old)])
        counts = {
            source.name: await _reencrypt(engine, source, columns, keys, key_file)
            for source, columns in encrypted_columns(metadata).items()
        }
        # Processes that have not read the file again still encrypt with the previous key.
        _write_keys(key_file, [new, old[0]])
    return counts


__all__ = [
    "EncryptedJSON",
    "SecretKeyError",
    "check_key_file",
    "decrypt_json",
    "digest_json",
    "encrypt_json",
    "encrypted_columns",
    "ensure_key_file",
    "read_keys",
    "rotate_key",
]
