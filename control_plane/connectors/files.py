"""Files on the worker's disk: CSV and JSON Lines sources, a JSON Lines destination."""

import csv
import glob
import json
from collections.abc import Iterable, Iterator
from itertools import zip_longest
from pathlib import Path
from typing import Any

from pydantic import Field

from control_plane.connectors import Batch, Destination, Record, Source, TypeConfig
from control_plane.connectors._batching import batched


def _files(path: str) -> list[Path]:
    """The file `path` names, or the files its glob matches in sorted order."""
    if Path(path).is_file():
        return [Path(path)]
    files = [Path(match) for match in sorted(glob.glob(path, recursive=True))]
    files = [file for file in files if file.is_file()]
    if not files:
        # A typo in the path would otherwise look like a source without data.
        raise FileNotFoundError(f"no file matches {path!r}")
    return files


class CsvSource(Source):
    name = "csv"

    class Config(TypeConfig):
        path: str = Field(description="A CSV file, or a glob of them; the first row is the header.")
        delimiter: str = Field(default=",", min_length=1, max_length=1)

    def read(self, *, cursor: Any | None, batch_size: int) -> Iterator[Batch]:
        """The rows of every file as dicts of strings, keyed by the header."""
        return batched(self._records(), batch_size)

    def _records(self) -> Iterator[Record]:
        for path in _files(self.config.path):
            # utf-8-sig drops the byte-order mark spreadsheets write, which would stick to the
            # first column's name.
            with path.open(newline="", encoding="utf-8-sig") as file:
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
        path: str = Field(description="A file of JSON objects, one a line, or a glob of them.")

    def read(self, *, cursor: Any | None, batch_size: int) -> Iterator[Batch]:
        """The objects of every file; blank lines are skipped."""
        return batched(self._records(), batch_size)

    def _records(self) -> Iterator[Record]:
        for path in _files(self.config.path):
            with path.open(encoding="utf-8") as file:
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
        path: str = Field(description="File the records are appended to, one JSON object a line.")

    def write(self, batches: Iterable[Batch]) -> int:
        """Append every record; values JSON cannot hold (dates, decimals) are written as str."""
        path = Path(self.config.path)
        path.parent.mkdir(parents=True, exist_ok=True)
        written = 0
        with path.open("a", encoding="utf-8") as file:
            for batch in batches:
                file.writelines(json.dumps(record, default=str) + "\n" for record in batch)
                written += len(batch)
        return written
