"""The built-in source and destination types and their configs."""

from typing import Literal, Self

from pydantic import Field, model_validator

from control_plane.connectors import Destination, Source, TypeConfig


class CsvSource(Source):
    name = "csv"

    class Config(TypeConfig):
        path: str = Field(description="A CSV file, or a glob of them; the first row is the header.")
        delimiter: str = Field(default=",", min_length=1, max_length=1)


class JsonlSource(Source):
    name = "jsonl"

    class Config(TypeConfig):
        path: str = Field(description="A file of JSON objects, one a line, or a glob of them.")


class SqlSource(Source):
    name = "sql"

    class Config(TypeConfig):
        url: str = Field(description="SQLAlchemy URL of the database to read.")
        query: str | None = Field(default=None, description="A SELECT to read; or give `table`.")
        table: str | None = Field(default=None, description="A table to read; or give `query`.")
        cursor_field: str | None = Field(
            default=None, description="Column that only grows; runs resume after its last value."
        )

        @model_validator(mode="after")
        def _query_or_table(self) -> Self:
            if (self.query is None) == (self.table is None):
                raise ValueError("give exactly one of query and table")
            return self


class HttpSource(Source):
    name = "http"

    class Config(TypeConfig):
        url: str = Field(description="URL of the first page (GET, JSON).")
        headers: dict[str, str] = Field(default_factory=dict)
        records_path: str | None = Field(
            default=None, description="Dotted path to the list of records in the JSON answer."
        )
        next_page_path: str | None = Field(
            default=None,
            description="Dotted path to the next page's URL; without it the Link header is used.",
        )


class JsonlDestination(Destination):
    name = "jsonl"

    class Config(TypeConfig):
        path: str = Field(description="File the records are appended to, one JSON object a line.")


class SqlDestination(Destination):
    name = "sql"

    class Config(TypeConfig):
        url: str = Field(description="SQLAlchemy URL of the database to write.")
        table: str = Field(description="Table to write; created when missing.")
        mode: Literal["append", "replace", "merge"] = "append"
        primary_key: list[str] = Field(
            default_factory=list, description="Columns to merge on (mode merge)."
        )

        @model_validator(mode="after")
        def _merge_needs_key(self) -> Self:
            if self.mode == "merge" and not self.primary_key:
                raise ValueError("mode merge needs primaryKey")
            return self
