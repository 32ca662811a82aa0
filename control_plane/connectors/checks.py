"""Connection checks: whether a source or destination config can be reached, logged into, read
or written, asked before it is saved or activated; and a source's discovery, which is a check
with one more step that lists its streams.

A check goes step by step and stops at the first step that fails; the steps after it are
reported skipped. `resolve` comes first for every type: the config validated within the
project's scope (its paths, hosts and their DNS), exactly as a run checks it. Then the type's
own steps (`ConnectorType.check_steps`): `connect`, `authenticate`, then `read` (a sample of
one record) for a source or `write` (the permissions a run needs, tried without writing
anything that stays) for a destination. A step says what it found or what to fix, never a
secret or a record's values.

Blocking (sockets, database drivers, files): run it in a thread. Each step gets the time left
until the check's deadline, and is given up on (in its daemon thread) when that runs out.
"""

import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Literal

from control_plane.connectors import Kind, Source, StepName, Stream, get_type, validate_config
from control_plane.errors import InvalidInput
from control_plane.policy import Scope

StepStatus = Literal["passed", "failed", "skipped"]


@dataclass(frozen=True)
class Step:
    kind: Kind
    name: StepName
    status: StepStatus
    message: str

    def as_json(self) -> dict[str, str]:
        return asdict(self)


def reason(error: BaseException) -> str:
    """What an error says, on one line: a database driver's own message rather than
    SQLAlchemy's wrapping of it (which adds the statement and a link)."""
    cause = getattr(error, "orig", None) or error
    text = " ".join(str(cause).split())
    return text or type(cause).__name__


def _within(step: Callable[[], str], seconds: float) -> str:
    """The step's answer, or a `TimeoutError` when it takes longer than `seconds` (the step
    goes on in its daemon thread, and its answer is dropped)."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["found"] = step()
        except BaseException as error:
            outcome["error"] = error

    worker = threading.Thread(target=run, name="connection check step", daemon=True)
    worker.start()
    worker.join(max(seconds, 0))
    if worker.is_alive():
        raise TimeoutError(f"no answer within {seconds:.0f} s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["found"]


def run(
    kind: Kind,
    type_name: str,
    config: dict[str, Any],
    scope: Scope,
    *,
    deadline: float,
    discover: bool = False,
) -> tuple[list[Step], list[Stream]]:
    """Every step of the check of one config (`deadline`: `time.monotonic()` to be done by),
    and with `discover`, a source's streams after a last step, `discover`."""
    try:
        validated = validate_config(kind, type_name, config, field="config", scope=scope)
    except InvalidInput as refused:
        return [Step(kind, "resolve", "failed", refused.detail.removeprefix("config: "))], []
    connector_type = get_type(kind, type_name)(validated, scope)  # type: ignore[call-arg]
    steps = [Step(kind, "resolve", "passed", "the config is valid and within the project's reach")]
    streams: list[Stream] = []
    type_steps = connector_type.check_steps()
    if discover and isinstance(connector_type, Source):
        source = connector_type

        def listing() -> str:
            found = source.discover()
            streams.extend(found)
            return f"found {len(found)} stream{'' if len(found) == 1 else 's'}"

        type_steps.append(("discover", listing))
    failed = False
    for name, step in type_steps:
        if failed:
            steps.append(Step(kind, name, "skipped", "an earlier step failed"))
            continue
        try:
            found = _within(step, deadline - time.monotonic())
        except Exception as error:
            failed = True
            steps.append(Step(kind, name, "failed", reason(error)))
        else:
            steps.append(Step(kind, name, "passed", found))
    return steps, [] if failed else streams


__all__ = ["Step", "StepStatus", "reason", "run"]
