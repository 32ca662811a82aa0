"""Files on the worker's disk, in the project's folder: CSV and JSON Lines sources, a JSON Lines
destination. Paths are relative to the project's folder (or absolute inside it)."""

import csv
import glob
import json
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from itertools import chain, zip_longest
from pathlib import Path
from typing import IO, Any

from pydantic import Field

from control_plane.connectors import (
    Batch,
    Destination,
    Record,
    Source,
    SourcePath,
    TargetPath,
    TypeConfig,
)
from control_plane.connectors._batching import batched
from control_plane.policy import Scope, is_glob

# A symlink as the last part of a path is never followed: the path was checked as it resolved.
_READ = os.O_RDONLY | os.O_NOFOLLOW
_APPEND = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW


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


class CsvSource(Source):
    name = "csv"

    class Config(TypeConfig):
        path: SourcePath = Field(
            description=(
                "A CSV file, or a glob of them, in the project's folder; the first row is the "
                "header."
            )
        )
        delimiter: str = Field(default=",", min_length=1, max_length=1)

    def read(self, *, cursor: Any | None, batch_size: int) -> Iterator[Batch]:
        """The rows of every file as dicts of strings, keyed by the header."""
        return batched(self._records(), batch_size)

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


class JsonlSource(Source):
    name = "jsonl"

    class Config(TypeConfig):
        path: SourcePath = Field(
            description=(
                "A file of JSON objects, one a line, or a glob of them, in the project's folder."
            )
        )

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
    name = "jsonl"

    class Config(TypeConfig):
        path: TargetPath = Field(
            description=(
                "File in the project's folder the records are appended to, one JSON object a line."
            )
        )

    def write(self, batches: Iterable[Batch]) -> int:
        """Append every record; values JSON cannot hold (dates, decimals) are written as str.

        The file is opened (and created) once the first batch is read, so a source that fails
        before it leaves nothing behind.
        """
        path = self.scope.path(self.config.path)
        batches = iter(batches)
        first = next(batches, None)
        if first is None:
            return 0
        path.parent.mkdir(parents=True, exist_ok=True)
        written = 0
        with _open(self.scope, path, _APPEND, mode="a", encoding="utf-8") as file:
            for batch in chain([first], batches):
                file.writelines(json.dumps(record, default=str) + "\n" for record in batch)
                written += len(batch)
        return written
