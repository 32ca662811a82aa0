"""Connectors as code: the YAML file that describes projects, their sources, destinations and
connectors by name, read and checked before anything asks the API.

Secrets are never in the file in clear: a secret value is `${VARIABLE}`, taken from the
environment, or the API's mask `********`, which keeps the secret stored (what `export`
writes). Every problem names the file, its line and the entry's path, and all are told at once.
"""

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from control_plane.connectors import MASK, Kind, holds_mask, registered_types, secret_values
from control_plane.policy import UNSCOPED
from models import ConnectorCreate, EndpointCreate, ProjectCreate
from models.base import MAX_JSON_DEPTH

REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
ENDPOINT_LISTS: dict[str, Kind] = {"sources": "source", "destinations": "destination"}
PROJECT_KEYS = {"name", "description", "sources", "destinations", "connectors"}
# In the file a connector names its source and destination; the API's ids are not written.
REFERENCES = {"source": "definedSourceId", "destination": "definedDestinationId"}
OVERRIDES: dict[str, Kind] = {
    "sourceConfigOverride": "source",
    "destinationConfigOverride": "destination",
}
_IDS = {"projectId", *REFERENCES.values()}
_PLACEHOLDER_ID = 1

Path_ = tuple[str | int, ...]


class ManifestError(Exception):
    """Every problem of a file, one per line: `file:line: path: what is wrong and the fix`."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass
class Endpoint:
    kind: Kind
    name: str
    type: str
    config: dict[str, Any]
    line: int
    keeps_secret: bool  # the config sends `********` back: only an existing one can


@dataclass
class Connector:
    name: str
    source: str
    destination: str
    fields: dict[str, Any]  # the API's camelCase fields, without the ids
    line: int
    keeps_secret: bool


@dataclass
class Project:
    name: str
    description: str | None
    line: int
    endpoints: list[Endpoint] = field(default_factory=list)
    connectors: list[Connector] = field(default_factory=list)


@dataclass
class Manifest:
    path: Path
    projects: list[Project]


def load(path: Path, env: Mapping[str, str]) -> Manifest:
    """The file at `path`, checked, its `${VARIABLE}`s taken from `env`."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise ManifestError([f"{path}: cannot be read: {error}"]) from None
    reader = _Reader(path, env)
    try:
        loader = yaml.SafeLoader(text)
        try:
            node = loader.get_single_node()
            if node is not None:
                # Before the document is built: building it merges `<<` keys into the nodes.
                aliases: dict[int, bool] = {}
                _lines(node, (), reader, aliases)
                if any(aliases.values()):
                    reader.raise_problems()
            data = loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        hint = " (quote a cron expression: '0 * * * *')" if "alias" in str(error) else ""
        raise ManifestError(
            [f"{where}: not YAML: {getattr(error, 'problem', error)}{hint}"]
        ) from None
    except RecursionError:
        raise ManifestError([f"{path}: nested too deeply to be read"]) from None
    projects = reader.manifest(data)
    reader.raise_problems()
    return Manifest(path, projects)


_TAG = "tag:yaml.org,2002:"
# What JSON carries; a date, a set or binary would not reach the API as written.
_JSON_TAGS = {f"{_TAG}{name}" for name in ("str", "int", "float", "bool", "null", "seq", "map")}
_MAX_DEPTH = MAX_JSON_DEPTH + 6  # a config's own depth, below projects[i].sources[j].config


def _lines(node: yaml.Node, path: Path_, reader: "_Reader", visited: dict[int, bool]) -> None:
    """Note the line of every value in the document by its path. Duplicate keys are problems, and
    so are aliases (`visited` tells which node was seen, and whether that was told): a few
    lines of them expand to billions of values."""
    if id(node) in visited:
        if not visited[id(node)]:
            reader.problem(path, "aliases (*name) are not supported: write the value out")
        visited[id(node)] = True
        return
    visited[id(node)] = False
    if len(path) > _MAX_DEPTH:
        reader.problem(path, f"nested deeper than {_MAX_DEPTH} levels", node.start_mark)
        return
    reader.lines[path] = node.start_mark.line + 1
    if node.tag not in _JSON_TAGS:
        what = "a date or time" if node.tag == f"{_TAG}timestamp" else f"a YAML {node.tag}"
        reader.problem(path, f"{what} is no JSON value: quote it", node.start_mark)
    elif node.tag == f"{_TAG}float" and node.value.lower().lstrip("+-") in (".inf", ".nan"):
        reader.problem(path, "infinity and NaN are no JSON numbers", node.start_mark)
    if isinstance(node, yaml.MappingNode):
        seen: set[Any] = set()
        for key, value in node.value:
            if key.tag == f"{_TAG}merge":
                reader.problem(
                    path, "merge keys (<<) are not supported: write the fields out", key.start_mark
                )
            elif key.tag != f"{_TAG}str":
                reader.problem(
                    path, f"the key {key.value!r} must be text: quote it", key.start_mark
                )
            elif key.value in seen:
                reader.problem(
                    (*path, key.value), f"{key.value!r} is given twice; keep one", key.start_mark
                )
            else:
                seen.add(key.value)
                _lines(value, (*path, key.value), reader, visited)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _lines(item, (*path, index), reader, visited)


def _dotted(path: Path_) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".")


class _Reader:
    def __init__(self, path: Path, env: Mapping[str, str]) -> None:
        self.path, self.env = path, env
        self.lines: dict[Path_, int] = {}
        self.problems: list[tuple[int, str]] = []

    def raise_problems(self) -> None:
        if self.problems:
            raise ManifestError([problem for _, problem in sorted(set(self.problems))])

    def line(self, path: Path_) -> int:
        while path not in self.lines and path:
            path = path[:-1]
        return self.lines.get(path, 1)

    def problem(self, path: Path_, message: str, mark: yaml.Mark | None = None) -> None:
        line = mark.line + 1 if mark else self.line(path)
        self.problems.append((line, f"{self.path}:{line}: {_dotted(path) or '(file)'}: {message}"))

    def mapping(self, value: Any, path: Path_, allowed: set[str]) -> dict[str, Any] | None:
        if not isinstance(value, dict):
            self.problem(path, f"must be a mapping with {', '.join(sorted(allowed))}")
            return None
        for key in value.keys() - allowed:
            self.problem(
                (*path, key), f"unknown field; the fields here: {', '.join(sorted(allowed))}"
            )
        return value

    def items(self, value: Any, path: Path_) -> list[Any]:
        if value is None:
            return []
        if not isinstance(value, list):
            self.problem(path, "must be a list (each item starting with '- ')")
            return []
        return value

    def checked(self, model: type[BaseModel], values: dict[str, Any], path: Path_) -> Any:
        try:
            return model.model_validate(values)
        except ValidationError as error:
            for problem in error.errors():
                self.problem((*path, *problem["loc"]), problem["msg"])
            return None

    def config_checked(self, model: type[BaseModel], config: dict[str, Any], path: Path_) -> None:
        """The config's fields as its type takes them (unknown ones, missing ones, their
        types); what a path or a host may reach is the API's to check, in the project's scope."""
        try:
            model.model_validate(config)
        except ValidationError as error:
            for problem in error.errors():
                if UNSCOPED not in problem["msg"]:
                    self.problem((*path, *problem["loc"]), problem["msg"])

    def manifest(self, data: Any) -> list[Project]:
        top = self.mapping(data, (), {"projects"})
        if top is None:
            return []
        projects = []
        for index, entry in enumerate(self.items(top.get("projects"), ("projects",))):
            project = self.project(entry, ("projects", index))
            if project is not None:
                projects.append(project)
        self.unique([(p.name, p.line) for p in projects], "project")
        return projects

    def project(self, entry: Any, path: Path_) -> Project | None:
        entry = self.mapping(entry, path, PROJECT_KEYS)
        if entry is None:
            return None
        spec = self.checked(
            ProjectCreate, {k: entry[k] for k in ("name", "description") if k in entry}, path
        )
        if spec is None:
            return None
        project = Project(spec.name, spec.description, self.line(path))
        for key, kind in ENDPOINT_LISTS.items():
            for index, item in enumerate(self.items(entry.get(key), (*path, key))):
                endpoint = self.endpoint(kind, item, (*path, key, index))
                if endpoint is not None:
                    project.endpoints.append(endpoint)
        for index, item in enumerate(self.items(entry.get("connectors"), (*path, "connectors"))):
            connector = self.connector(project, item, (*path, "connectors", index))
            if connector is not None:
                project.connectors.append(connector)
        for kind in ENDPOINT_LISTS.values():
            named = [(e.name, e.line) for e in project.endpoints if e.kind == kind]
            self.unique(named, kind)
        self.unique([(c.name, c.line) for c in project.connectors], "connector")
        return project

    def endpoint(self, kind: Kind, entry: Any, path: Path_) -> Endpoint | None:
        entry = self.mapping(entry, path, {"name", "type", "config"})
        if entry is None:
            return None
        config = self.secrets(kind, entry.get("config", {}), (*path, "config"))
        spec = self.checked(
            EndpointCreate,
            {**entry, "config": config, "projectId": _PLACEHOLDER_ID},
            path,
        )
        if spec is None:
            return None
        connector_type = registered_types().get((kind, spec.type))
        if connector_type is None:
            known = ", ".join(sorted(name for k, name in registered_types() if k == kind))
            self.problem((*path, "type"), f"unknown {kind} type {spec.type!r}; known: {known}")
            return None
        self.config_checked(connector_type.Config, spec.config, (*path, "config"))
        return Endpoint(
            kind, spec.name, spec.type, spec.config, self.line(path), holds_mask(config)
        )

    def connector(self, project: Project, entry: Any, path: Path_) -> Connector | None:
        allowed = {*ConnectorCreate.model_json_schema()["properties"], *REFERENCES} - _IDS
        entry = self.mapping(entry, path, allowed)
        if entry is None:
            return None
        values = dict(entry)
        for key, kind in OVERRIDES.items():
            if key in values:
                values[key] = self.secrets(kind, values[key], (*path, key))
        names = {}
        for key in REFERENCES:
            name = values.pop(key, None)
            kind = "source" if key == "source" else "destination"
            known = sorted({e.name for e in project.endpoints if e.kind == kind})
            if not isinstance(name, str):
                self.problem((*path, key), f"name the connector's {kind}: one of {known}")
            elif name not in known:
                self.problem(
                    (*path, key),
                    f"project {project.name!r} of this file has no {kind} named {name!r}; "
                    f"its {kind}s: {', '.join(known) or 'none'}",
                )
            names[key] = name
        ids = {id_: _PLACEHOLDER_ID for id_ in _IDS}
        spec = self.checked(ConnectorCreate, {**values, **ids}, path)
        if spec is None or len(names) < len(REFERENCES):
            return None
        fields = {k: v for k, v in spec.model_dump(by_alias=True).items() if k not in _IDS}
        keeps = any(holds_mask(fields[key]) for key in OVERRIDES)
        return Connector(
            spec.name, names["source"], names["destination"], fields, self.line(path), keeps
        )

    def secrets(self, kind: Kind, config: Any, path: Path_) -> Any:
        """`config` with its `${VARIABLE}`s set; a secret in clear is a problem."""
        if not isinstance(config, dict):
            return config
        try:
            found = list(secret_values(kind, config))
        except ValueError as error:
            self.problem(path, f"holds a URL that cannot be read: {error}")
            found = []
        for where, value in found:
            if not (isinstance(value, str) and (REFERENCE.search(value) or value == MASK)):
                self.problem(
                    (*path, *where),
                    "a secret in clear: write it as ${VARIABLE} and set that environment "
                    f"variable, or as {MASK} to keep the secret stored",
                )
        missing = sorted({name for name in _references(config) if name not in self.env})
        for name in missing:
            self.problem(
                path, f"the environment variable {name} is not set; set it or remove ${{{name}}}"
            )
        return _substituted(config, lambda name: self.env.get(name, ""))

    def unique(self, named: list[tuple[str, int]], what: str) -> None:
        seen: set[str] = set()
        for name, line in named:
            if name in seen:
                self.problems.append(
                    (line, f"{self.path}:{line}: {what} {name!r} is described twice")
                )
            seen.add(name)


def _references(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield from REFERENCE.findall(value)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _references(item)
    elif isinstance(value, list):
        for item in value:
            yield from _references(item)


def _substituted(value: Any, lookup: Any) -> Any:
    if isinstance(value, str):
        return REFERENCE.sub(lambda match: lookup(match.group(1)), value)
    if isinstance(value, dict):
        return {key: _substituted(item, lookup) for key, item in value.items()}
    if isinstance(value, list):
        return [_substituted(item, lookup) for item in value]
    return value


__all__ = ["ENDPOINT_LISTS", "OVERRIDES", "REFERENCES", "Manifest", "ManifestError", "load"]
