"""`control-plane plan`, `apply` and `export`: connectors as code, through the REST API.

The API is the only way in, so its auth, project scoping and audit log hold for the file as
for any client. A plan asks the API's own dry runs (`?dryRun=true`) wherever what it changes
exists already, so the checks, the masked secrets and what happens in Prefect are the
server's; a connector is only asked when its visible fields differ or it sends a secret, so a
plan of an unchanged file adds no run to the audit log. What depends on an object the plan
would create first is shown from the file and checked by the API when applied.
"""

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

import httpx
import yaml

from control_plane.connectors import mask_secrets
from control_plane.manifest import OVERRIDES, REFERENCES, Connector, Endpoint, Manifest
from models import ConnectorCreate

Action = Literal["create", "update", "delete"]
Key = tuple[str, str, str]  # (kind, project, name)
Ids = dict[Key, int]
Request = tuple[str, str, dict[str, Any] | None, dict[str, str]]  # method, path, body, headers
# Deletes go in the order the API lets them: a connector before what it uses.
_DELETE_ORDER = {"connector": 0, "destination": 1, "source": 2}
_PAGE = 1000
_SHOWN = ("name", "description", "type", "config")


class ApiError(Exception):
    """The API refused or could not be reached: what was asked and its answer."""


class Api:
    """The control plane's /api/v1 over HTTP, with the bearer token when one is given."""

    def __init__(self, url: str, token: str | None) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.url = url
        self.http = httpx.Client(base_url=f"{url}/api/v1", headers=headers, timeout=120)

    def call(
        self,
        method: str,
        path: str,
        *,
        body: dict[str, Any] | None = None,
        params: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> Any:
        try:
            response = self.http.request(method, path, json=body, params=params, headers=headers)
        except (httpx.HTTPError, httpx.InvalidURL) as error:
            raise ApiError(
                f"{method} {path}: {error}; is the API up at {self.url}? "
                "(CONTROL_PLANE_API_URL names it)"
            ) from None
        if response.status_code >= 400:
            raise ApiError(f"{method} {path}: {response.status_code} {_detail(response)}")
        try:
            return response.json() if response.content else None
        except ValueError:
            raise ApiError(
                f"{method} {path}: {response.status_code} is no JSON: is {self.url} the "
                "control plane's API? (CONTROL_PLANE_API_URL names it)"
            ) from None

    def list(self, path: str, **params: Any) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        while True:
            page = self.call("GET", path, params={**params, "limit": _PAGE, "offset": len(items)})
            items += page["data"]
            if len(items) >= page["count"] or not page["data"]:
                return items

    def close(self) -> None:
        self.http.close()


def _detail(response: httpx.Response) -> str:
    try:
        detail = response.json().get("detail", response.text)
    except ValueError:
        return response.text
    if isinstance(detail, list):
        return "; ".join(f"{'.'.join(map(str, e.get('loc', [])))}: {e.get('msg')}" for e in detail)
    return str(detail)


@dataclass
class Step:
    """One change: shown by `plan`, made by `apply` as one API call."""

    action: Action
    kind: str
    project: str
    name: str
    line: int | None
    changes: list[dict[str, Any]]
    # The call, built when applied: it may name ids of objects created before it.
    request: Callable[[Ids], Request] = field(repr=False)
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> Key:
        return (self.kind, self.project, self.name)

    def public(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "kind": self.kind,
            "project": self.project,
            "name": self.name,
            "line": self.line,
            "changes": self.changes,
            **self.details,
        }


@dataclass
class Plan:
    steps: list[Step]
    drift: list[dict[str, Any]]
    not_in_file: list[str]

    @property
    def changes(self) -> bool:
        return bool(self.steps or self.drift)

    def public(self) -> dict[str, Any]:
        counts = {
            action: sum(s.action == action for s in self.steps) for action in get_args(Action)
        }
        return {
            "steps": [step.public() for step in self.steps],
            "drift": self.drift,
            "notInFile": self.not_in_file,
            "summary": {**counts, "drift": len(self.drift)},
        }


class _State:
    """What the API holds of the file's projects, by name."""

    def __init__(self, api: Api, manifest: Manifest) -> None:
        named = {p.name for p in manifest.projects}
        self.projects = {p["name"]: p for p in api.list("/projects") if p["name"] in named}
        self.ids: Ids = {}
        self.objects: dict[Key, dict[str, Any]] = {}
        for name, project in self.projects.items():
            self.ids[("project", name, name)] = project["id"]
            for kind in ("source", "destination", "connector"):
                path = "/connectors" if kind == "connector" else f"/defined-{kind}s"
                for item in api.list(path, projectId=project["id"]):
                    self.ids[(kind, name, item["name"])] = item["id"]
                    self.objects[(kind, name, item["name"])] = item
        self.names = {(key[0], id_): key[2] for key, id_ in self.ids.items()}

    def id(self, key: Key, created: Ids) -> int:
        """The id of `key`, stored or created by this apply."""
        return self.ids[key] if key in self.ids else created[key]


def plan(api: Api, manifest: Manifest, *, prune: bool) -> Plan:
    """What applying the file would change, and where Prefect drifted from the database."""
    state = _State(api, manifest)
    steps: list[Step] = []
    deletes: list[Step] = []
    drift: list[dict[str, Any]] = []
    not_in_file: list[str] = []
    for project in manifest.projects:
        with _entry(manifest, project.line, f"project {project.name}"):
            steps += _project_step(api, state, project.name, project.description, project.line)
        for endpoint in project.endpoints:
            with _entry(manifest, endpoint.line, f"{endpoint.kind} {endpoint.name}"):
                steps += _endpoint_step(api, state, project.name, endpoint)
        for connector in project.connectors:
            key = ("connector", project.name, connector.name)
            with _entry(manifest, connector.line, f"connector {connector.name}"):
                steps += _connector_step(api, state, project.name, connector)
                if key in state.ids:
                    found = api.call("GET", f"/connectors/{state.ids[key]}/drift")
                    if not found["inSync"]:
                        drift.append({"project": project.name, "name": connector.name, **found})
        described = {("connector", project.name, c.name) for c in project.connectors} | {
            (e.kind, project.name, e.name) for e in project.endpoints
        }
        for key, item in state.objects.items():
            if key[1] != project.name or key in described:
                continue
            if prune:
                deletes.append(_delete_step(api, key, item))
            else:
                not_in_file.append(f"{key[0]} {key[1]}/{key[2]}")
    deletes.sort(key=lambda step: _DELETE_ORDER[step.kind])
    return Plan(steps + deletes, drift, not_in_file)


@contextmanager
def _entry(manifest: Manifest, line: int, what: str) -> Iterator[None]:
    """An API error while planning an entry of the file names the entry."""
    try:
        yield
    except ApiError as error:
        raise ApiError(f"{manifest.path}:{line}: {what}: {error}") from None


def _shown(values: dict[str, Any]) -> dict[str, Any]:
    return {key: values.get(key) for key in _SHOWN if key in values}


def _field_changes(before: dict[str, Any], after: dict[str, Any]) -> list[dict[str, Any]]:
    """Field by field, from the file, for what the API cannot plan yet (its project or its
    source is created first)."""
    return [
        {"field": key, "before": before.get(key), "after": value, "secretChanged": False}
        for key, value in after.items()
        if before.get(key) != value
    ]


def _server_step(
    api: Api, action: Action, kind: str, project: str, name: str, line: int | None, call: Any
) -> list[Step]:
    """The step as the API's dry run of `call` plans it; none when it changes nothing."""
    method, path, body, headers = call({})
    planned = api.call(method, path, body=body, params={"dryRun": "true"}, headers=headers)
    deployment = (planned.get("deployment") or {}).get("action", "none")
    # Every update of a connector moves its version on: alone, that is no change.
    changed = [change for change in planned["changes"] if change["field"] != "version"]
    if action == "update" and not changed and deployment == "none":
        return []
    details = {
        key: planned[key]
        for key in ("deployment", "runsDropped", "nextRuns", "warnings", "usedBy")
        if planned.get(key)
    }
    return [Step(action, kind, project, name, line, planned["changes"], call, details)]


def _project_step(
    api: Api, state: _State, name: str, description: str | None, line: int
) -> list[Step]:
    body = {"name": name, "description": description}
    if name not in state.projects:
        return _server_step(
            api, "create", "project", name, name, line, lambda ids: ("POST", "/projects", body, {})
        )
    path = f"/projects/{state.projects[name]['id']}"
    return _server_step(
        api,
        "update",
        "project",
        name,
        name,
        line,
        lambda ids: ("PATCH", path, {"description": description}, {}),
    )


def _endpoint_step(api: Api, state: _State, project: str, endpoint: Endpoint) -> list[Step]:
    key: Key = (endpoint.kind, project, endpoint.name)
    collection = f"/defined-{endpoint.kind}s"
    spec = {"name": endpoint.name, "type": endpoint.type, "config": endpoint.config}
    if key in state.ids:
        path = f"{collection}/{state.ids[key]}"
        change = {"type": endpoint.type, "config": endpoint.config}
        return _server_step(
            api,
            "update",
            endpoint.kind,
            project,
            endpoint.name,
            endpoint.line,
            lambda ids: ("PATCH", path, change, {}),
        )
    _refuse_kept_secret(endpoint.keeps_secret, endpoint.kind, project, endpoint.name)

    def create(ids: Ids) -> Request:
        project_id = state.id(("project", project, project), ids)
        return "POST", collection, {**spec, "projectId": project_id}, {}

    if ("project", project, project) in state.ids:
        return _server_step(
            api, "create", endpoint.kind, project, endpoint.name, endpoint.line, create
        )
    shown = {**spec, "config": mask_secrets(endpoint.kind, endpoint.config)}
    return [
        Step(
            "create",
            endpoint.kind,
            project,
            endpoint.name,
            endpoint.line,
            _field_changes({}, shown),
            request=create,
        )
    ]


def _refuse_kept_secret(keeps: bool, kind: str, project: str, name: str) -> None:
    if keeps:
        raise ApiError(
            f"{kind} {project}/{name} does not exist yet, so its ******** keeps no stored "
            "secret: write the secret as ${VARIABLE} and set that environment variable"
        )


def _connector_step(api: Api, state: _State, project: str, connector: Connector) -> list[Step]:
    key: Key = ("connector", project, connector.name)
    refs: dict[str, Key] = {
        "projectId": ("project", project, project),
        REFERENCES["source"]: ("source", project, connector.source),
        REFERENCES["destination"]: ("destination", project, connector.destination),
    }
    pending = [ref for ref, ref_key in refs.items() if ref_key not in state.ids]

    def body(ids: Ids) -> dict[str, Any]:
        return {**connector.fields, **{ref: state.id(key, ids) for ref, key in refs.items()}}

    current = state.objects.get(key)
    if current is None:
        _refuse_kept_secret(connector.keeps_secret, "connector", project, connector.name)

        def create(ids: Ids) -> Request:
            return "POST", "/connectors", body(ids), {}

        if not pending:
            return _server_step(
                api, "create", "connector", project, connector.name, connector.line, create
            )
        return [
            Step(
                "create",
                "connector",
                project,
                connector.name,
                connector.line,
                _field_changes({}, _connector_shown(connector)),
                request=create,
            )
        ]

    path, version = f"/connectors/{current['id']}", current["version"]

    def update(ids: Ids) -> Request:
        change = {k: v for k, v in body(ids).items() if k != "projectId"}
        return "PATCH", path, change, {"If-Match": f'"{version}"'}

    shown = _connector_shown(connector)
    before = {
        **{k: current.get(k) for k in connector.fields},
        "source": state.names.get(("source", current["definedSourceId"])),
        "destination": state.names.get(("destination", current["definedDestinationId"])),
    }
    sends_secret = any(
        mask_secrets(kind, connector.fields[f]) != connector.fields[f]
        for f, kind in OVERRIDES.items()
    )
    if before == shown and not sends_secret:
        return []
    if pending:
        return [
            Step(
                "update",
                "connector",
                project,
                connector.name,
                connector.line,
                _field_changes(before, shown),
                request=update,
            )
        ]
    return _server_step(api, "update", "connector", project, connector.name, connector.line, update)


def _connector_shown(connector: Connector) -> dict[str, Any]:
    fields = {
        key: mask_secrets(OVERRIDES[key], value) if key in OVERRIDES else value
        for key, value in connector.fields.items()
    }
    return {**fields, "source": connector.source, "destination": connector.destination}


def _delete_step(api: Api, key: Key, item: dict[str, Any]) -> Step:
    kind, project, name = key
    path = f"/connectors/{item['id']}" if kind == "connector" else f"/defined-{kind}s/{item['id']}"
    if kind == "connector":
        [step] = _server_step(
            api, "delete", kind, project, name, None, lambda ids: ("DELETE", path, None, {})
        )
        return step
    # Planned here, not by the API: it refuses while a connector that this plan also deletes
    # uses it.
    return Step(
        "delete",
        kind,
        project,
        name,
        None,
        [
            {"field": k, "before": v, "after": None, "secretChanged": False}
            for k, v in _shown(item).items()
        ],
        request=lambda ids: ("DELETE", path, None, {}),
    )


@dataclass
class Applied:
    done: list[Step]
    failed: Step | None = None
    error: str | None = None
    not_done: list[Step] = field(default_factory=list)

    def public(self) -> dict[str, Any]:
        def named(steps: list[Step]) -> list[str]:
            return [_title(step) for step in steps]

        return {
            "applied": named(self.done),
            "failed": None
            if self.failed is None
            else {"step": _title(self.failed), "error": self.error},
            "notApplied": named(self.not_done),
        }


def apply(api: Api, planned: Plan) -> Applied:
    """Each step as one API call, in order; the first failure stops it."""
    ids: Ids = {}
    done: list[Step] = []
    for index, step in enumerate(planned.steps):
        method, path, body, headers = step.request(ids)
        try:
            answer = api.call(method, path, body=body, headers=headers)
        except ApiError as error:
            return Applied(done, step, str(error), planned.steps[index + 1 :])
        if step.action == "create":
            ids[step.key] = answer["id"]
        done.append(step)
    return Applied(done)


def export(api: Api, projects: list[str]) -> str:
    """Today's state of the projects (every visible one when none is named) as a file that
    `plan` finds nothing to change in; secrets as the API's mask, which keeps them."""
    found = api.list("/projects")
    if projects:
        missing = sorted(set(projects) - {p["name"] for p in found})
        if missing:
            raise ApiError(f"no project named {', '.join(map(repr, missing))} is visible")
        found = [p for p in found if p["name"] in projects]
    defaults = {
        name: info.get_default(call_default_factory=True)
        for name, info in ConnectorCreate.model_fields.items()
        if not info.is_required()
    }
    written = []
    for project in found:
        entry: dict[str, Any] = {"name": project["name"]}
        if project.get("description") is not None:
            entry["description"] = project["description"]
        names: dict[tuple[str, int], str] = {}
        for kind, key in (("source", "sources"), ("destination", "destinations")):
            items = api.list(f"/defined-{kind}s", projectId=project["id"])
            names |= {(kind, item["id"]): item["name"] for item in items}
            if items:
                entry[key] = [{k: item[k] for k in ("name", "type", "config")} for item in items]
        connectors = []
        for item in api.list("/connectors", projectId=project["id"]):
            described: dict[str, Any] = {
                "name": item["name"],
                "source": names[("source", item["definedSourceId"])],
                "destination": names[("destination", item["definedDestinationId"])],
            }
            for name, info in ConnectorCreate.model_fields.items():
                alias = info.alias or name
                if alias in described or alias in ("projectId", *REFERENCES.values()):
                    continue
                if name not in defaults or item[alias] != defaults[name]:
                    described[alias] = item[alias]
            connectors.append(described)
        if connectors:
            entry["connectors"] = connectors
        written.append(entry)
    return _EXPORT_HEADER + yaml.safe_dump(
        {"projects": written}, sort_keys=False, allow_unicode=True
    )


_EXPORT_HEADER = (
    "# Written by `control-plane export`. A secret shown as ******** keeps the stored one;\n"
    "# write ${VARIABLE} instead to set it from that environment variable.\n"
)


def _title(step: Step) -> str:
    return f"{step.action} {_named(step)}"


def _named(step: Step) -> str:
    return (
        f"project {step.name}"
        if step.kind == "project"
        else f"{step.kind} {step.project}/{step.name}"
    )


_SYMBOLS = {"create": "+", "update": "~", "delete": "-"}


def render(planned: Plan) -> str:
    """The plan as a person reads it, like Terraform's: `+` create, `~` change, `-` delete."""
    lines = []
    for step in planned.steps:
        where = f" (line {step.line})" if step.line else ""
        lines.append(f"{_SYMBOLS[step.action]} {_named(step)}{where}")
        for change in step.changes:
            before, after = (_value(change[side]) for side in ("before", "after"))
            if change.get("secretChanged"):
                lines.append(f"    {change['field']}: a secret changed (masked)")
            elif step.action == "create":
                lines.append(f"    {change['field']}: {after}")
            elif step.action == "delete":
                lines.append(f"    {change['field']}: {before}")
            else:
                lines.append(f"    {change['field']}: {before} -> {after}")
        deployment = step.details.get("deployment", {})
        if deployment.get("action", "none") != "none":
            name = f" {deployment['name']}" if deployment.get("name") else ""
            lines.append(f"    Prefect: {deployment['action']} deployment{name}")
        if dropped := step.details.get("runsDropped"):
            lines.append(f"    runs dropped: {len(dropped)}")
        if runs := step.details.get("nextRuns"):
            lines.append(f"    next run: {runs[0]['at']}")
        for warning in step.details.get("warnings", []):
            lines.append(f"    warning: {warning}")
        if used := step.details.get("usedBy"):
            lines.append(f"    used by connectors: {', '.join(map(str, used))}")
    for found in planned.drift:
        lines.append(
            f"! connector {found['project']}/{found['name']}: Prefect drifted "
            f"({found.get('action')}): {'; '.join(found.get('differences', []))}; "
            "`control-plane reconcile` repairs it"
        )
    for name in planned.not_in_file:
        lines.append(f"  {name} is not in the file: kept (--prune deletes it)")
    summary = planned.public()["summary"]
    lines.append(
        "No changes: the API matches the file."
        if not planned.changes
        else f"Plan: {summary['create']} to create, {summary['update']} to change, "
        f"{summary['delete']} to delete; {summary['drift']} drifted in Prefect."
    )
    return "\n".join(lines)


def _value(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


__all__ = ["Api", "ApiError", "Applied", "Plan", "apply", "export", "plan", "render"]
