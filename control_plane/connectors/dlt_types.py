"""dlt (dlthub.com) behind our interface: a destination that loads through a dlt pipeline into
DuckDB, local files (Parquet, JSON Lines, CSV) or PostgreSQL.

dlt is an optional extra (`pip install '.[dlt]'`): it is imported when a run or a check needs
it, so the type is listed, and its configs validated, without it.

Only destinations whose target the project's scope can check are offered: a DuckDB file or a
folder in the project's folder, a PostgreSQL database on an allowed host (reached at the address
checked). dlt's other destinations (BigQuery, Snowflake, buckets) reach hosts and accounts the
scope knows nothing of.

Loads are exactly-once: the run's load (its stream, id and cursor) is written into the dlt
resource's state, which dlt commits with the data (its `_dlt_pipeline_state` table) and restores
from the destination, so `last_load` reads it back from there. Each run works in a temporary
folder of its own for dlt's local files; nothing of it stays on the worker.
"""

import os
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any, Literal, Self

from pydantic import Field, model_validator

from control_plane.connectors import (
    Batch,
    CheckStep,
    DatabaseUrl,
    Destination,
    Load,
    SelectedStream,
    TargetPath,
    TypeConfig,
    url_field,
)
from control_plane.connectors.sql import database_steps

_IDENTIFIER = r"^[A-Za-z_][A-Za-z0-9_]{0,62}$"
# Where a resource's state keeps our loads, by stream.
_LOADS = "control_plane_loads"
_MODES = {"full_refresh": "replace", "incremental": "append", "merge": "merge"}


def _dlt() -> Any:
    """dlt, imported on first use, its telemetry off; a clear error when it is not installed."""
    os.environ.setdefault("RUNTIME__DLTHUB_TELEMETRY", "false")
    try:
        import dlt
    except ImportError:
        raise RuntimeError(
            "the dlt type needs dlt on the worker: pip install 'connector-control-plane[dlt]'"
        ) from None
    return dlt


def _cause(error: BaseException) -> BaseException:
    """The error a dlt pipeline step wraps (a step failure, around an extraction error, around
    what our batches raised, such as a run's timeout)."""
    while error.__cause__ is not None:
        error = error.__cause__
    return error


class DltDestination(Destination):
    name = "dlt"
    keeps_loads = True

    class Config(TypeConfig):
        destination: Literal["duckdb", "filesystem", "postgres"] = Field(
            description=(
                "dlt's destination: duckdb (a file), filesystem (files in a folder) or postgres."
            )
        )
        path: TargetPath | None = Field(
            default=None,
            description="duckdb: the database file; filesystem: the folder; in the project's.",
        )
        url: DatabaseUrl | None = url_field(
            default=None, description="postgres: the database's URL, on an allowed host."
        )
        dataset: str = Field(
            pattern=_IDENTIFIER, description="The dataset: a schema, or a folder under `path`."
        )
        table: str = Field(pattern=_IDENTIFIER, description="The table the records load into.")
        mode: Literal["append", "replace", "merge"] = "append"
        primary_key: list[str] = Field(
            default_factory=list, description="Columns to merge on (mode merge)."
        )
        file_format: Literal["parquet", "jsonl", "csv"] = Field(
            default="parquet", description="filesystem: the files' format."
        )

        @model_validator(mode="after")
        def _target_fits(self) -> Self:
            wanted = "url" if self.destination == "postgres" else "path"
            if getattr(self, wanted) is None:
                raise ValueError(f"destination {self.destination} needs {wanted}")
            if self.mode == "merge" and not self.primary_key:
                raise ValueError("mode merge needs primaryKey")
            return self

    @property
    def replaces(self) -> bool:
        return self.config.mode == "replace"

    def stream(self, selected: SelectedStream) -> Destination:
        """Into a table of its own in the dataset, `destinationName` (by default the stream's
        name); `default` into the configured table. Its sync mode decides how."""
        return self.with_config(
            table=selected.target or self.config.table,
            mode=_MODES[selected.sync_mode],
            primary_key=selected.primary_key,
        )

    def check_steps(self) -> list[CheckStep]:
        steps: list[CheckStep] = [("connect", self._installed)]
        if self.config.url is not None:
            steps += database_steps(self.scope, self.config.url, creates=True)
        return steps

    def _installed(self) -> str:
        return f"dlt {_dlt().__version__} loads into {self.config.destination}"

    def write(self, batches: Iterable[Batch], load: Load | None = None) -> int:
        """Run a dlt pipeline over the batches, as one load; with `load`, in the resource's
        state, which dlt commits with the records."""
        dlt = _dlt()
        written = 0

        def records() -> Iterator[Batch]:
            nonlocal written
            for batch in batches:
                if batch:
                    written += len(batch)
                    yield batch
            if load is not None:
                loads = dlt.current.resource_state().setdefault(_LOADS, {})
                loads[load.stream] = {"load_id": load.load_id, "cursor": load.cursor}

        resource = dlt.resource(
            records,
            name=self.config.table,
            write_disposition=self.config.mode,
            primary_key=self.config.primary_key or None,
        )
        with self._pipeline() as pipeline:
            try:
                pipeline.run(resource, loader_file_format=self._file_format())
            except Exception as error:
                raise _cause(error) from None
        return written

    def last_load(self, stream: str) -> Load | None:
        """The load last committed for `stream` into the table, from the state dlt restores
        from the destination."""
        with self._pipeline() as pipeline:
            pipeline.sync_destination()
            sources = pipeline.state.get("sources", {})
            state = sources.get(pipeline.pipeline_name, {}).get("resources", {})
        found = state.get(self.config.table, {}).get(_LOADS, {}).get(stream)
        if found is None:
            return None
        return Load(stream=stream, load_id=found["load_id"], cursor=found["cursor"])

    @contextmanager
    def _pipeline(self) -> Iterator[Any]:
        """A pipeline of the table's own (its state is the table's), working in a temporary
        folder."""
        dlt = _dlt()
        with tempfile.TemporaryDirectory(prefix="control-plane-dlt-") as working:
            yield dlt.pipeline(
                pipeline_name=f"control_plane_{self.config.table}",
                destination=self._destination(),
                dataset_name=self.config.dataset,
                pipelines_dir=working,
            )

    def _destination(self) -> Any:
        destinations = _dlt().destinations
        config = self.config
        if config.destination == "postgres":
            url = self.scope.database(config.url).set(drivername="postgresql")
            return destinations.postgres(url.render_as_string(hide_password=False))
        path = self.scope.path(config.path)
        if config.destination == "duckdb":
            return destinations.duckdb(str(path))
        return destinations.filesystem(str(path))

    def _file_format(self) -> str | None:
        return self.config.file_format if self.config.destination == "filesystem" else None
