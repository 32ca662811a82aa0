"""Files on the worker's disk, in the project's folder: CSV and JSON Lines sources, a JSON Lines
destination that appends each load exactly once. Paths are relative to the project's folder (or
absolute inside it)."""

import csv
import fcntl
import glob
import hashlib
import io
import json
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from itertools import chain, zip_longest
from pathlib import Path
from typing import IO, Any

from pydantic import Field

from control_plane.connectors import (
    Batch,
    CheckStep,
    ColumnsUnreadable,
    Destination,
    Load,
    Record,
    SelectedStream,
    Source,
    SourcePath,
    TargetPath,
    TypeConfig,
    json_value,
    validate_config,
)
from control_plane.connectors._batching import batched
from control_plane.errors import InvalidInput
from control_plane.policy import Scope, is_glob

# A symlink as the last part of a path is never followed: the path was checked as it resolved.
_READ = os.O_RDONLY | os.O_NOFOLLOW
# Read too: a destination hashes the end of what it committed (see `_tail_hash`).
_APPEND = os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW
_REWRITE = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW

# What a JSON Lines destination has committed (see `JsonlDestination`):
# {"size": int, "tail_sha256": str, "loads": {stream: {"load_id", "cursor", "committed_at"}}}
Manifest = dict[str, Any]
# The bytes a CSV row takes, about: how large a block Arrow reads for a batch of rows.
_ROW_BYTES = 100
# The committed part of a file is known by its size and the hash of its last bytes up to there.
_TAIL_BYTES = 4096


def _files(scope: Scope, path: str) -> list[Path]:
    """The file `path` names, or the files its glob matches in sorted order, each checked."""
    if not is_glob(path):
        return [scope.path(path)]
    matches = [Path(match) for match in sorted(glob.glob(scope.pattern(path), recursive=True))]
    files = [scope.path(str(match)) for match in matches if match.is_file()]
    if not files:
        # A typo in the path would otherwise look like a source without data.
        raise FileNotFoundError(f"no file matches {path!r}")
    return files


@contextmanager
def _open(scope: Scope, path: Path, flags: int, **kwargs: Any) -> Iterator[IO[Any]]:
    """`path`, opened as checked: 0o644 when created, refused if it moved since its check."""
    descriptor = os.open(path, flags, 0o644)
    scope.opened(path, descriptor)
    try:
        file = open(descriptor, **kwargs)
    except BaseException:
        os.close(descriptor)
        raise
    with file:
        yield file


class _FileSource(Source):
    """A source of files that `config.path` names."""

    config: "CsvSource.Config | JsonlSource.Config"

    def check_steps(self) -> list[CheckStep]:
        return [("connect", self._found), *super().check_steps()]

    def _found(self) -> str:
        files = _files(self.scope, self.config.path)
        if not files[0].is_file():
            raise FileNotFoundError(f"{self.config.path!r} is no file in the project's folder")
        return f"found {len(files)} file{'s' if len(files) > 1 else ''}"


class CsvSource(_FileSource):
    name = "csv"
    reads_columns = True

    class Config(TypeConfig):
        path: SourcePath = Field(
            description=(
                "A CSV file, or a glob of them, in the project's folder; the first row is the "
                "header."
            )
        )
        delimiter: str = Field(default=",", min_length=1, max_length=1)

    config: Config

    def read(self, *, cursor: Any | None, batch_size: int) -> Iterator[Batch]:
        """The rows of every file as dicts of strings, keyed by the header."""
        return batched(self._records(), batch_size)

    def read_columns(self, *, batch_size: int) -> Iterator[Any]:
        """The rows of every file as Arrow record batches of strings, parsed by Arrow as
        `read` parses them (the byte-order mark dropped, blank lines skipped, an empty field
        ''), in blocks of about `batch_size` rows. A row shorter or longer than its header, or
        a header that names a field twice, is ColumnsUnreadable: `read` says what it makes
        of them."""
        # Imported here: every sync run's process imports this module, and pyarrow takes 0.2 s.
        import pyarrow
        import pyarrow.csv

        parse = pyarrow.csv.ParseOptions(delimiter=self.config.delimiter)
        for path in _files(self.scope, self.config.path):
            with _open(self.scope, path, _READ, mode="rb") as file:
                header = _header(file, self.config.delimiter)
                if not header:
                    continue
                if len(set(header)) < len(header):
                    raise ColumnsUnreadable(f"{path}: the header names a field twice")
                strings = dict.fromkeys(header, pyarrow.string())
                try:
                    reader = pyarrow.csv.open_csv(
                        file,
                        read_options=pyarrow.csv.ReadOptions(
                            block_size=max(batch_size * _ROW_BYTES, 1 << 16)
                        ),
                        parse_options=parse,
                        convert_options=pyarrow.csv.ConvertOptions(column_types=strings),
                    )
                    yield from reader
                except pyarrow.ArrowInvalid as error:
                    raise ColumnsUnreadable(f"{path}: {error}") from error

    def _records(self) -> Iterator[Record]:
        for path in _files(self.scope, self.config.path):
            # utf-8-sig drops the byte-order mark spreadsheets write, which would stick to the
            # first column's name.
            with _open(self.scope, path, _READ, newline="", encoding="utf-8-sig") as file:
                # csv.reader and zip, as csv.DictReader does but faster: blank lines are skipped
                # and missing trailing fields are None.
                reader = csv.reader(file, delimiter=self.config.delimiter)
                header = next(reader, [])
                for row in reader:
                    if not row:
                        continue
                    if len(row) == len(header):
                        yield dict(zip(header, row, strict=True))
                    elif len(row) > len(header):
                        raise ValueError(
                            f"{path}, line {reader.line_num}: more fields than the header"
                        )
                    else:
                        yield dict(zip_longest(header, row))


def _header(file: IO[bytes], delimiter: str) -> list[str]:
    """The CSV file's header, as `csv.reader` reads it; the file is back at its start."""
    text = io.TextIOWrapper(file, encoding="utf-8-sig", newline="")
    header = next(csv.reader(text, delimiter=delimiter), [])
    text.detach()
    file.seek(0)
    return header


class JsonlSource(_FileSource):
    name = "jsonl"

    class Config(TypeConfig):
        path: SourcePath = Field(
            description=(
                "A file of JSON objects, one a line, or a glob of them, in the project's folder."
            )
        )

    config: Config

    def read(self, *, cursor: Any | None, batch_size: int) -> Iterator[Batch]:
        """The objects of every file; blank lines are skipped."""
        return batched(self._records(), batch_size)

    def _records(self) -> Iterator[Record]:
        for path in _files(self.scope, self.config.path):
            with _open(self.scope, path, _READ, encoding="utf-8") as file:
                for number, line in enumerate(file, start=1):
                    if not line.strip():
                        continue
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError as error:
                        raise ValueError(f"{path}, line {number}: {error.msg}") from error
                    if not isinstance(record, dict):
                        raise ValueError(f"{path}, line {number}: not a JSON object")
                    yield record


class JsonlDestination(Destination):
    """Appends records to a JSON Lines file, each load exactly once.

    Next to the file, its manifest `.<name>.loads.json` holds what is committed: the file's
    size and a hash of its last 4 KiB up to there, and per stream the last load (load id,
    cursor, when). A write holds an exclusive `flock` on the file throughout: it cuts the file
    back to the committed size (the tail of a write that died), appends, fsyncs the file, then
    commits by replacing the manifest (a temp file, fsynced, renamed onto it) and fsyncing the
    directory. A write without a load keeps the manifest's size too, so that a later write cuts
    back to the right place.

    Guaranteed, among writers that go through this type: once `write` returns, its records and
    its load are on disk; if it dies before, the next write removes what it appended and
    `last_load` still names the previous load, and one that fails takes back what it appended
    at once. Not guaranteed: until that next write, readers of the file see a killed write's
    records (its last line maybe cut); writers that ignore the
    lock are not kept out, and what they append is cut off like a dead write's tail. A file
    without a manifest (written before loads were kept), or whose committed part changed from
    outside (replaced, rewritten, cut shorter), counts as committed as it is.
    """

    name = "jsonl"
    keeps_loads = True

    class Config(TypeConfig):
        path: TargetPath = Field(
            description=(
                "File in the project's folder the records are appended to, one JSON object a line."
            )
        )

    config: Config

    def check_steps(self) -> list[CheckStep]:
        return [("write", self._writable)]

    def stream(self, selected: SelectedStream) -> Destination:
        """Appended to a file of its own beside the configured one, `<destinationName>.jsonl`
        (by default the stream's name); `default` to the configured file. A file is appended
        to: incremental only."""
        if selected.sync_mode != "incremental":
            raise InvalidInput(
                "streams",
                f"a jsonl destination appends: give stream {selected.name!r} syncMode incremental",
            )
        if selected.target is None:
            return self
        path = str(Path(self.config.path).parent / f"{selected.target}.jsonl")
        config = validate_config(
            "destination", self.name, {"path": path}, field="streams", scope=self.scope
        )
        return type(self)(config, self.scope)

    def _writable(self) -> str:
        """Whether a run may append to the file, or create it (and the folders it lies in)."""
        path = self.scope.path(self.config.path)
        if path.exists():
            if not path.is_file() or not os.access(path, os.W_OK):
                raise PermissionError(f"{self.config.path!r} is no file this worker may append to")
            return f"may append to {path.name}"
        folder = next(parent for parent in path.parents if parent.exists())
        if not folder.is_dir() or not os.access(folder, os.W_OK):
            raise PermissionError(
                f"{self.config.path!r} cannot be created: {folder.name!r} is no folder this "
                "worker may write in"
            )
        return f"may create {path.name}: the first run does"

    def write(self, batches: Iterable[Batch], load: Load | None = None) -> int:
        """Append every record; values JSON has no type for as `json_value` writes them.

        The file is opened (and created) once the first batch is read, so a source that fails
        before it leaves nothing behind. A load without records still commits, the file created
        empty if missing, so that the next run knows this load is done.
        """
        path = self.scope.path(self.config.path)
        batches = iter(batches)
        first = next(batches, None)
        if first is None and load is None:
            return 0
        path.parent.mkdir(parents=True, exist_ok=True)
        manifest_path = _manifest_path(self.scope, path)
        written = 0
        with _open(self.scope, path, _APPEND, mode="a", encoding="utf-8") as file:
            fcntl.flock(file, fcntl.LOCK_EX)  # released when the file is closed
            manifest = _committed(self.scope, manifest_path, file.fileno())
            try:
                for batch in chain([] if first is None else [first], batches):
                    file.writelines(
                        json.dumps(record, default=json_value) + "\n" for record in batch
                    )
                    written += len(batch)
                file.flush()
            except BaseException:
                # A write that fails (its source, its timeout) takes back what it appended.
                with suppress(OSError):
                    file.flush()
                os.ftruncate(file.fileno(), manifest["size"])
                raise
            os.fsync(file.fileno())
            size = os.fstat(file.fileno()).st_size
            manifest.update(size=size, tail_sha256=_tail_hash(file.fileno(), size))
            if load is not None:
                manifest["loads"][load.stream] = {
                    "load_id": load.load_id,
                    "cursor": load.cursor,
                    "committed_at": datetime.now(UTC).isoformat(),
                }
            _write_manifest(self.scope, manifest_path, manifest)
        return written

    def last_load(self, stream: str) -> Load | None:
        """The stream's load in the manifest, which names only loads whose records committed."""
        path = self.scope.path(self.config.path)
        manifest = _read_manifest(self.scope, _manifest_path(self.scope, path))
        entry = manifest["loads"].get(stream) if manifest else None
        if entry is None:
            return None
        return Load(stream=stream, load_id=entry["load_id"], cursor=entry["cursor"])


def _manifest_path(scope: Scope, path: Path) -> Path:
    return scope.path(str(path.with_name(f".{path.name}.loads.json")))


def _committed(scope: Scope, manifest_path: Path, descriptor: int) -> Manifest:
    """The manifest of the open, locked file, which is cut back to its committed size.

    The file is known by how its committed part ends, not by its inode, which a file made anew
    after a delete often gets back. When the manifest does not describe the file (there is none
    yet, or the file is shorter or ends otherwise there), all of the file counts as committed,
    and a manifest saying so is written before anything is appended, so that a write that dies
    is cut back to that.
    """
    manifest = _read_manifest(scope, manifest_path)
    size = os.fstat(descriptor).st_size
    if (
        manifest is not None
        and manifest["size"] <= size
        and manifest["tail_sha256"] == _tail_hash(descriptor, manifest["size"])
    ):
        if manifest["size"] < size:
            os.ftruncate(descriptor, manifest["size"])  # the tail of a write that died
        return manifest
    loads = manifest["loads"] if manifest is not None else {}
    manifest = {"size": size, "tail_sha256": _tail_hash(descriptor, size), "loads": loads}
    _write_manifest(scope, manifest_path, manifest)
    return manifest


def _tail_hash(descriptor: int, size: int) -> str:
    """The hash of the file's last bytes before `size`."""
    start = max(0, size - _TAIL_BYTES)
    return hashlib.sha256(os.pread(descriptor, size - start, start)).hexdigest()


def _read_manifest(scope: Scope, manifest_path: Path) -> Manifest | None:
    try:
        with _open(scope, manifest_path, _READ, encoding="utf-8") as file:
            return json.load(file)
    except FileNotFoundError:
        return None
    except json.JSONDecodeError as error:
        raise ValueError(f"{manifest_path} is no manifest of loads: {error}") from error


def _write_manifest(scope: Scope, manifest_path: Path, manifest: Manifest) -> None:
    """Replace the manifest, atomically and durably: the commit point of a write."""
    temporary = scope.path(str(manifest_path.with_name(f"{manifest_path.name}.tmp")))
    with _open(scope, temporary, _REWRITE, mode="w", encoding="utf-8") as file:
        json.dump(manifest, file)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, manifest_path)
    directory = os.open(manifest_path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
