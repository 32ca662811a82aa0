"""Airbyte's Python sources (`airbyte-source-*` on PyPI) behind our interface, run as PyAirbyte
runs them: each connector installed into a virtualenv of its own, its executable spoken to over
the Airbyte protocol (`check`, `discover`, `read` with a configured catalog and a state, JSON
messages a line on its stdout).

PyAirbyte itself cannot share an environment with Prefect 3.9 (it pins `whenever` 0.8, which
Prefect needs at 0.10.5 or later, and older `opentelemetry-api` and `cryptography`), so this
module does for each connector what it does, with nothing to install but the connector.

A connector is code from PyPI run on the worker, and it opens its own connections: the project's
scope cannot reach into it. So only the connectors the operator lists in
`CONTROL_PLANE_AIRBYTE_CONNECTORS` run, each in a process whose environment holds nothing of the
worker's (no database URL, no key), with its config in a file only it reads, deleted afterwards.

A stream's state is the connector's own (its last STATE message for the stream): it is the
stream's cursor in the control plane, saved, reset, set and exactly-once like any other.
"""

import fcntl
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator

from control_plane.connectors import (
    DEFAULT_STREAM,
    MASK,
    Batch,
    CheckStep,
    Record,
    SelectedStream,
    Source,
    Stream,
    TypeConfig,
    secret_field,
)
from control_plane.settings import get_settings

_INSTALLED = ".installed"


def installed(connector: str, version: str | None) -> Path:
    """The connector's executable, installed into its virtualenv first if it is not yet; one
    installer at a time per connector and version (a file lock), and a half-made virtualenv
    is made again."""
    home = get_settings().airbyte_path / f"{connector}-{version or 'latest'}"
    home.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{home}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (home / _INSTALLED).exists():
            shutil.rmtree(home, ignore_errors=True)
            subprocess.run([sys.executable, "-m", "venv", str(home)], check=True)
            package = f"airbyte-{connector}" + (f"=={version}" if version else "")
            done = subprocess.run(
                [str(home / "bin" / "python"), "-m", "pip", "install", "--quiet", package],
                capture_output=True,
                text=True,
            )
            if done.returncode != 0:
                raise RuntimeError(f"pip could not install {package}: {done.stderr[-500:]}")
            (home / _INSTALLED).touch()
    return home / "bin" / connector


class AirbyteSource(Source):
    name = "airbyte"
    reports_position = True

    class Config(TypeConfig):
        connector: str = Field(
            pattern=r"^source-[a-z0-9-]{1,80}$",
            description=(
                "The Airbyte source, e.g. source-faker (PyPI's airbyte-source-faker); one of "
                "CONTROL_PLANE_AIRBYTE_CONNECTORS."
            ),
        )
        version: str | None = Field(
            default=None, pattern=r"^[0-9][0-9A-Za-z.+-]{0,40}$", description="Its version."
        )
        config: dict[str, Any] = secret_field(
            default_factory=dict,
            description="The connector's own config (its spec); every value is shown masked.",
        )
        stream: str = Field(
            min_length=1, max_length=255, description=f"The stream its `{DEFAULT_STREAM}` is."
        )
        cursor_field: str | None = Field(
            default=None,
            max_length=255,
            description="Read incrementally (the connector's own cursor decides where it resumes).",
        )

        @field_validator("connector")
        @classmethod
        def _allowed(cls, connector: str) -> str:
            allowed = get_settings().airbyte_connectors
            if connector not in allowed:
                raise ValueError(
                    f"{connector} is not among the connectors this control plane runs "
                    f"(CONTROL_PLANE_AIRBYTE_CONNECTORS: {', '.join(allowed) or 'none'})"
                )
            return connector

    config: Config

    @property
    def cursor_field(self) -> str | None:
        return self.config.cursor_field

    def stream(self, selected: SelectedStream) -> Source:
        """The connector's stream `selected` names (`default`: the configured one)."""
        name = self.config.stream if selected.name == DEFAULT_STREAM else selected.name
        return self.with_config(stream=name, cursor_field=selected.cursor_field)

    def check_steps(self) -> list[CheckStep]:
        return [("connect", self._install), ("authenticate", self._check), *super().check_steps()]

    def _install(self) -> str:
        installed(self.config.connector, self.config.version)
        return f"airbyte-{self.config.connector} is installed"

    def _check(self) -> str:
        for message in self._messages("check"):
            if message.get("type") == "CONNECTION_STATUS":
                status = message["connectionStatus"]
                if status.get("status") != "SUCCEEDED":
                    raise PermissionError(status.get("message") or "the connector's check failed")
                return "the connector's check succeeded"
        raise RuntimeError("the connector answered its check with no status")

    def discover(self) -> list[Stream]:
        """The connector's catalog: each stream with its schema, key and cursor."""
        streams = []
        for message in self._messages("discover"):
            if message.get("type") == "CATALOG":
                streams += [_stream(found) for found in message["catalog"]["streams"]]
        return streams

    def read(self, *, cursor: Any | None, batch_size: int) -> Iterator[Batch]:
        """The stream's records, in batches that end at each STATE message the connector sends
        (and at `batch_size`); `position` is then that state."""
        self.position = cursor
        stream: dict[str, Any] = {
            "name": self.config.stream,
            "json_schema": {},
            "supported_sync_modes": ["full_refresh", "incremental"],
        }
        incremental = self.config.cursor_field is not None
        catalog = {
            "streams": [
                {
                    "stream": stream,
                    "sync_mode": "incremental" if incremental else "full_refresh",
                    "destination_sync_mode": "append" if incremental else "overwrite",
                    "cursor_field": [self.config.cursor_field] if incremental else [],
                }
            ]
        }
        state = None
        if incremental and cursor is not None:
            descriptor = {"stream_descriptor": {"name": self.config.stream}, "stream_state": cursor}
            state = [{"type": "STREAM", "stream": descriptor}]
        pending: Batch = []
        for message in self._messages("read", catalog=catalog, state=state):
            kind = message.get("type")
            if kind == "RECORD" and message["record"].get("stream") == self.config.stream:
                pending.append(message["record"]["data"])
                if len(pending) >= batch_size:
                    yield pending
                    pending = []
            elif kind == "STATE" and (found := stream_state(message["state"], stream["name"])):
                # The state covers every record before it: those of the batch yielded next.
                self.position = found
                if pending:
                    yield pending
                    pending = []
        if pending:
            yield pending

    def _messages(
        self, command: str, *, catalog: dict[str, Any] | None = None, state: Any = None
    ) -> Iterator[Record]:
        """The connector's protocol messages for `command`; a failure raises with the error it
        traced, or the end of what it wrote on stderr."""
        executable = installed(self.config.connector, self.config.version)
        with _files(config=self.config.config, catalog=catalog, state=state) as (folder, args):
            errors = folder / "stderr"
            traced = None
            with (
                errors.open("w") as stderr,
                subprocess.Popen(
                    [str(executable), command, *args],
                    stdout=subprocess.PIPE,
                    stderr=stderr,
                    text=True,
                    cwd=folder,
                    # Nothing of the worker's environment: no database URL, no key file.
                    env={"PATH": str(executable.parent), "HOME": str(folder), "LANG": "C.UTF-8"},
                ) as process,
            ):
                try:
                    assert process.stdout is not None
                    for line in process.stdout:
                        if not line.startswith("{"):
                            continue
                        message = json.loads(line)
                        if (
                            message.get("type") == "TRACE"
                            and message["trace"].get("type") == "ERROR"
                        ):
                            traced = message["trace"]["error"].get("message")
                        yield message
                finally:
                    if process.poll() is None:
                        process.kill()
            code = process.returncode
            if code != 0 or traced is not None:
                said = traced or errors.read_text(errors="replace")[-500:].strip()
                said = _without_values(said, self.config.config)
                raise RuntimeError(f"{self.config.connector} {command} failed ({code}): {said}")


@contextmanager
def _files(**contents: Any) -> Iterator[tuple[Path, list[str]]]:
    """A private folder with a file for each content given (config, catalog, state), and the
    connector's arguments that name them; the folder is deleted afterwards."""
    with tempfile.TemporaryDirectory(prefix="control-plane-airbyte-") as folder:
        os.chmod(folder, 0o700)
        args = []
        for name, content in contents.items():
            if content is None:
                continue
            path = Path(folder) / f"{name}.json"
            path.write_text(json.dumps(content))
            args += [f"--{name}", str(path)]
        yield Path(folder), args


def _without_values(text: str, config: Any) -> str:
    """`text` with every string of the connector's config masked: its error may quote its
    config, whose secrets only the connector's own spec knows."""
    if isinstance(config, dict):
        config = list(config.values())
    if isinstance(config, list):
        for value in config:
            text = _without_values(text, value)
    elif isinstance(config, str) and len(config) >= 4:
        text = text.replace(config, MASK)
    return text


def stream_state(state: dict[str, Any], name: str) -> Any:
    """The state of stream `name` in a STATE message; None when it is another stream's."""
    if state.get("type") == "STREAM":
        stream = state["stream"]
        if stream["stream_descriptor"]["name"] == name:
            return stream.get("stream_state")
        return None
    return state.get("data")  # the legacy form: the whole source's state


def _stream(found: dict[str, Any]) -> Stream:
    key = found.get("source_defined_primary_key") or []
    cursor = found.get("default_cursor_field") or []
    return Stream(
        name=found["name"],
        namespace=found.get("namespace"),
        json_schema=found.get("json_schema", {}),
        primary_key=[part[0] for part in key if len(part) == 1],
        cursor_candidates=cursor[:1],
    )
