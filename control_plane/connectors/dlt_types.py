"""dlt (dlthub.com) behind our interface: a destination that loads through a dlt pipeline into
DuckDB, local files (Parquet, JSON Lines, CSV) or PostgreSQL, and dlt's `rest_api` verified
source.

dlt is an optional extra (`pip install '.[dlt]'`): it is imported when a run or a check needs
it, so the type is listed, and its configs validated, without it.

Only destinations whose target the project's scope can check are offered: a DuckDB file or a
folder in the project's folder, a PostgreSQL database on an allowed host (reached at the address
checked). dlt's other destinations (BigQuery, Snowflake, buckets) reach hosts and accounts the
scope knows nothing of.

The `rest_api` source sends every request through the project's scope: dlt's client gets a
requests session whose adapter sends through the scope's transport (each host checked, each
connection made to the address checked, redirects and next pages included), and the config's
headers go only to the base URL's origin. Its config is ours, not dlt's dict: dlt's own auth
types (OAuth2 fetches tokens with a session of its own) and custom sessions are left out.

Loads are exactly-once: the run's load (its stream, id and cursor) is written into the dlt
resource's state, which dlt commits with the data (its `_dlt_pipeline_state` table) and restores
from the destination, so `last_load` reads it back from there. Each run works in a temporary
folder of its own for dlt's local files; nothing of it stays on the worker.
"""

import os
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated, Any, Literal, Self

import httpx
import requests
from pydantic import AfterValidator, Field, model_validator
from requests.structures import CaseInsensitiveDict

from control_plane.connectors import (
    DEFAULT_STREAM,
    SAMPLE_SIZE,
    WRITE_MODES,
    Batch,
    CheckStep,
    DatabaseUrl,
    Destination,
    HttpUrl,
    Load,
    Record,
    SelectedStream,
    Source,
    Stream,
    TableConfig,
    TargetPath,
    TypeConfig,
    sampled,
    secret_field,
    url_field,
    validate_config,
)
from control_plane.connectors._batching import batched
from control_plane.connectors.http import MAX_REDIRECTS, Headers, origin_of, reach
from control_plane.connectors.sql import database_steps
from control_plane.errors import InvalidInput
from control_plane.policy import Scope

if TYPE_CHECKING:  # dlt is an extra, imported when a run needs it
    from dlt.sources.rest_api.typing import Endpoint

_IDENTIFIER = r"^[A-Za-z_][A-Za-z0-9_]{0,62}$"
# Where a resource's state keeps our loads, by stream.
_LOADS = "control_plane_loads"


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

    class Config(TableConfig):
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
        file_format: Literal["parquet", "jsonl", "csv"] = Field(
            default="parquet", description="filesystem: the files' format."
        )

        @model_validator(mode="after")
        def _target_fits(self) -> Self:
            wanted = "url" if self.destination == "postgres" else "path"
            if getattr(self, wanted) is None:
                raise ValueError(f"destination {self.destination} needs {wanted}")
            return self

    config: Config

    @property
    def replaces(self) -> bool:
        return self.config.mode == "replace"

    def stream(self, selected: SelectedStream) -> Destination:
        """Into a table of its own in the dataset, `destinationName` (by default the stream's
        name); `default` into the configured table. Its sync mode decides how. Validated as
        the config is: a table's name is an identifier (dlt's filesystem makes it a folder)."""
        changes = {
            "table": selected.target or self.config.table,
            "mode": WRITE_MODES[selected.sync_mode],
            "primaryKey": selected.primary_key,
        }
        config = self.config.model_dump(by_alias=True) | changes
        validated = validate_config(
            "destination", self.name, config, field="streams", scope=self.scope
        )
        return type(self)(validated, self.scope)

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
        # The config's validator: a url for postgres, a path for the others.
        if config.destination == "postgres":
            assert config.url is not None
            url = self.scope.database(config.url).set(drivername="postgresql")
            return destinations.postgres(url.render_as_string(hide_password=False))
        assert config.path is not None
        path = self.scope.path(config.path)
        if config.destination == "duckdb":
            return destinations.duckdb(str(path))
        return destinations.filesystem(str(path))

    def _file_format(self) -> str | None:
        return self.config.file_format if self.config.destination == "filesystem" else None


class _ScopedAdapter(requests.adapters.BaseAdapter):
    """Sends requests' requests through the scope's httpx transport; the configured headers
    only to `home`, the base URL's origin."""

    def __init__(self, scope: Scope, home: httpx.URL, secret_headers: list[str], timeout: float):
        super().__init__()
        self.client = httpx.Client(transport=scope.transport(), trust_env=False, timeout=timeout)
        self.home = origin_of(home)
        self.secret_headers = {name.lower() for name in secret_headers}

    def send(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> Any:
        url = httpx.URL(str(request.url))
        headers = dict(request.headers)
        if origin_of(url) != self.home:
            headers = {k: v for k, v in headers.items() if k.lower() not in self.secret_headers}
        # requests' annotations are wider than what reaches here: httpx takes header values of
        # str and bytes mixed, and dlt's requests carry a body of bytes or str, or none.
        answer = self.client.request(
            str(request.method),
            url,
            headers=headers,  # type: ignore[arg-type]
            content=request.body,  # type: ignore[arg-type]
        )
        response = requests.Response()
        response.status_code = answer.status_code
        response.headers = CaseInsensitiveDict(answer.headers)
        response._content = answer.content
        response.url = str(answer.url)
        response.reason = answer.reason_phrase
        response.encoding = answer.encoding
        response.request = request
        return response

    def close(self) -> None:
        self.client.close()


class _Session(requests.Session):
    # dlt deep-copies its config, session included; a session's locks cannot be copied.
    def __deepcopy__(self, memo: dict[int, Any]) -> Self:
        return self


def _distinct_names(resources: list["RestApiResource"]) -> list["RestApiResource"]:
    names = [resource.name for resource in resources]
    if twice := sorted({name for name in names if names.count(name) > 1}):
        raise ValueError(f"each resource's name must differ: {', '.join(twice)} twice")
    return resources


class RestApiResource(TypeConfig):
    """An endpoint of the API: a stream of the source."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,100}$", description="The stream's name.")
    path: str = Field(min_length=1, max_length=2000, description="Relative to baseUrl.")
    params: dict[str, str | int | float | bool] = Field(
        default_factory=dict, description="Query parameters of the first request."
    )
    data_selector: str | None = Field(
        default=None, max_length=200, description="JSONPath to the records in each answer."
    )
    paginator: Literal["auto", "json_link", "header_link", "single_page"] = Field(
        default="auto", description="How the next page is found; json_link with nextUrlPath."
    )
    next_url_path: str | None = Field(
        default=None, max_length=200, description="json_link: JSONPath to the next page's URL."
    )
    cursor_field: str | None = Field(
        default=None, max_length=200, description="A field that only grows; runs resume after it."
    )
    cursor_param: str | None = Field(
        default=None,
        max_length=200,
        description="The query parameter the cursor is sent in (records after it are kept "
        "either way).",
    )

    def dlt_paginator(self) -> Any:
        if self.paginator == "json_link":
            return {"type": "json_link", "next_url_path": self.next_url_path or "next"}
        return self.paginator


class RestApiSource(Source):
    """dlt's `rest_api` verified source: a REST API's endpoints, page by page, one a stream."""

    name = "rest_api"

    class Config(TypeConfig):
        base_url: HttpUrl = url_field(description="The API's base URL, on an allowed host.")
        headers: Headers = secret_field(
            default_factory=dict,
            description="Headers of the requests to the base URL's origin, e.g. Authorization.",
        )
        resources: Annotated[
            list[RestApiResource],
            Field(min_length=1, max_length=100),
            AfterValidator(_distinct_names),
        ] = Field(description=f"Its endpoints; the first one is its `{DEFAULT_STREAM}` stream.")
        timeout: float = Field(default=30.0, gt=0, le=600, description="Seconds for each page.")

    config: Config

    @property
    def resource(self) -> RestApiResource:
        """The endpoint this source reads: the first one, or the stream chosen (`stream`)."""
        return self.config.resources[0]

    @property
    def cursor_field(self) -> str | None:
        return self.resource.cursor_field

    def stream(self, selected: SelectedStream) -> Source:
        """The endpoint `selected` names (`default`: the first one), with its cursor field."""
        name = self.resource.name if selected.name == DEFAULT_STREAM else selected.name
        chosen = next((r for r in self.config.resources if r.name == name), None)
        if chosen is None:
            known = ", ".join(repr(r.name) for r in self.config.resources)
            raise InvalidInput("streams", f"the rest_api source has no resource {name!r}: {known}")
        resource = chosen.model_copy(update={"cursor_field": selected.cursor_field})
        return self.with_config(resources=[resource])

    def check_steps(self) -> list[CheckStep]:
        connect: CheckStep = (
            "connect",
            lambda: reach(self.scope, self.config.base_url, self.config.timeout),
        )
        return [connect, *super().check_steps()]

    def discover(self) -> list[Stream]:
        """Each endpoint, as its first records show it."""
        return [
            sampled(
                resource.name,
                self.stream(SelectedStream(name=resource.name))._first_batch(SAMPLE_SIZE),
            )
            for resource in self.config.resources
        ]

    def read(self, *, cursor: Any | None, batch_size: int) -> Iterator[Batch]:
        """The endpoint's records, page by page; with a cursor, those after it."""
        return batched(self._records(cursor), batch_size)

    def _records(self, cursor: Any | None) -> Iterator[Record]:
        _dlt()
        from dlt.sources.rest_api import rest_api_source

        resource = self.resource
        params: dict[str, Any] = dict(resource.params)
        if cursor is not None and resource.cursor_param is not None:
            params[resource.cursor_param] = cursor
        home = httpx.URL(self.config.base_url)
        session = _Session()
        session.trust_env = False  # a proxy from the environment would hide the real host
        session.max_redirects = MAX_REDIRECTS
        adapter = _ScopedAdapter(self.scope, home, list(self.config.headers), self.config.timeout)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        endpoint: Endpoint = {
            "path": resource.path,
            "params": params,
            "paginator": resource.dlt_paginator(),
        }
        if resource.data_selector is not None:
            endpoint["data_selector"] = resource.data_selector
        source = rest_api_source(
            {
                "client": {
                    "base_url": str(home),
                    "headers": dict(self.config.headers),
                    "session": session,
                },
                "resources": [{"name": resource.name, "endpoint": endpoint}],
            }
        )
        field = resource.cursor_field
        with session:
            try:
                for record in source.resources[resource.name]:
                    if cursor is None or field is None or _after(record.get(field), cursor):
                        yield record
            except Exception as error:
                raise _cause(error) from None


def _after(value: Any, cursor: Any) -> bool:
    """Whether a record's cursor value comes after the cursor; one without a value counts."""
    return value is None or value > cursor
