"""Notifications: a connector's events told to the channels its routes name.

A channel is a Prefect notification block (`<block type>/<block name>`), so Prefect keeps its
credentials (encrypted, masked in its API and UI) and the Prefect UI creates and edits it:
Slack, Microsoft Teams, PagerDuty, e-mail through SendGrid, ... and `signed-webhook`, ours, a
webhook whose receiver can verify each delivery. An event a route hears carries the label
`notify` (`control_plane.events`); the automation `notify-owners-of-connector-events` runs
`notify-owners` for it, once per event (Prefect's idempotency key of the action), and that
run tells each channel once, trying again briefly while the channel fails.
"""

import hashlib
import hmac
import json
import time
from typing import Any

import httpx
from prefect.blocks.abstract import NotificationBlock, NotificationError
from prefect.blocks.core import Block
from prefect.client.orchestration import PrefectClient
from prefect.exceptions import ObjectNotFound
from prefect.settings import get_current_settings
from pydantic import Field, SecretStr, field_validator

from control_plane.errors import InvalidInput
from control_plane.orchestrator import prefect_client
from models import Connector, Project
from models.notifications import NotificationRoute

SIGNATURE_HEADER = "X-Control-Plane-Signature"
DELIVERY_HEADER = "X-Control-Plane-Delivery"
EVENT_HEADER = "X-Control-Plane-Event"
SIGNED_WEBHOOK = "signed-webhook"


def signature(secret: bytes, timestamp: str, body: bytes) -> str:
    """HMAC-SHA256 of `<timestamp>.<body>` under the secret, in hex."""
    return hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


class DeliveryFailed(NotificationError):
    """The receiver did not take the delivery; says why without its URL (a credential)."""

    def __init__(self, reason: str) -> None:
        super().__init__(log=reason)

    def __str__(self) -> str:
        return self.log


class SignedWebhook(NotificationBlock):
    """POSTs each notification as JSON with the header `X-Control-Plane-Signature:
    t=<unix time>,v1=<HMAC-SHA256 of "<t>.<body>" under the secret, hex>`, so the receiver can
    check it came from here, unchanged, and recently; `X-Control-Plane-Delivery` names the
    delivery (the same on each try)."""

    _block_type_name = "Signed Webhook"
    _block_type_slug = SIGNED_WEBHOOK
    _description = "A webhook whose every delivery is signed with HMAC-SHA256 of a shared secret."

    url: SecretStr = Field(
        description="Where to POST, http(s); kept secret like the shared secret.",
        examples=["https://hooks.example.com/control-plane"],
    )
    secret: SecretStr = Field(description="The shared secret, at least 16 characters.")
    timeout_seconds: float = Field(default=10, gt=0, le=60)

    @field_validator("url")
    @classmethod
    def _http(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value().startswith(("http://", "https://")):
            raise ValueError("is not an http(s) URL")
        return value

    @field_validator("secret")
    @classmethod
    def _long_enough(cls, value: SecretStr) -> SecretStr:
        if len(value.get_secret_value()) < 16:
            raise ValueError("is shorter than 16 characters")
        return value

    async def notify(self, body: str, subject: str | None = None) -> None:
        """Prefect's notification interface: `{"subject", "text"}`, signed."""
        await self.send({"subject": subject, "text": body}, delivery=f"notify:{time.time_ns()}")

    async def send(self, payload: dict[str, Any], *, delivery: str, event: str = "") -> None:
        body = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
        timestamp = str(int(time.time()))
        signed = signature(self.secret.get_secret_value().encode(), timestamp, body)
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: f"t={timestamp},v1={signed}",
            DELIVERY_HEADER: delivery,
            EVENT_HEADER: event,
        }
        try:
            async with httpx.AsyncClient(timeout=self.timeout_seconds) as client:
                response = await client.post(
                    self.url.get_secret_value(), content=body, headers=headers
                )
        except httpx.HTTPError as error:
            reason = f"the receiver cannot be reached: {type(error).__name__}"
            raise DeliveryFailed(reason) from None
        if response.status_code >= 300:
            raise DeliveryFailed(
                f"the receiver answered {response.status_code} {response.reason_phrase}"
            )


async def check_channels(routes: list[NotificationRoute] | None, *, field: str) -> None:
    """Each route's channel is a Prefect block that sends notifications; a 422 naming the
    field otherwise. One read of Prefect per channel."""
    channels = sorted({route.channel for route in routes or ()})
    if not channels:
        return
    async with prefect_client() as client:
        for channel in channels:
            await _check_channel(client, channel, field=field)


async def _check_channel(client: PrefectClient, channel: str, *, field: str) -> None:
    block_type, name = channel.split("/")
    try:
        document = await client.read_block_document_by_name(name, block_type, include_secrets=False)
    except ObjectNotFound:
        raise InvalidInput(
            field,
            f"Prefect has no block {channel!r}: create it in the Prefect UI (Blocks), "
            f"e.g. a Signed Webhook named {name!r}, or name one that exists",
        ) from None
    if "notify" not in (document.block_schema.capabilities if document.block_schema else []):
        raise InvalidInput(
            field,
            f"the block {channel!r} sends no notifications; name a notification block "
            "(signed-webhook, slack-webhook, ...)",
        )


def failure(error: Exception) -> str:
    """Why a channel's block did not deliver, never with the receiver's URL, which may be a
    credential: Prefect's own blocks raise httpx's errors, whose messages name it."""
    if isinstance(error, NotificationError):
        return error.log[:300]
    if isinstance(error, httpx.HTTPStatusError):
        response = error.response
        return f"the receiver answered {response.status_code} {response.reason_phrase}"
    if isinstance(error, httpx.HTTPError):
        return f"the receiver cannot be reached: {type(error).__name__}"
    return f"the block failed: {type(error).__name__}"


async def load_channel(channel: str) -> NotificationBlock:
    """The channel's block; a ValueError when Prefect has none (or it sends nothing)."""
    block = await Block.aload(channel)
    if not isinstance(block, NotificationBlock):
        raise ValueError(f"{channel} sends no notifications")
    return block


_HEADLINES = {
    "connector.run-failed": "its sync run failed",
    "connector.run-crashed": "its sync run crashed",
    "connector.failing": "it keeps failing",
    "connector.auto-deactivated": "it switched itself off after failing",
    "connector.stale": "it is stale: it missed its freshness SLA",
    "connector.fresh": "it is fresh again",
    "connector.activated": "it was activated",
    "connector.deactivated": "it was deactivated",
    "connector.paused": "it was paused",
    "connector.resumed": "it resumed",
}


def run_url(flow_run_id: str | None) -> str | None:
    ui = get_current_settings().ui_url
    return f"{ui.rstrip('/')}/runs/flow-run/{flow_run_id}" if ui and flow_run_id else None


def message(
    event: str, occurred: str, payload: dict[str, Any], connector: Connector, project: Project
) -> dict[str, Any]:
    """What a delivery says: a subject and a text a person reads, and the facts as fields."""
    owners = connector.owners or project.owners
    flow_run_id = payload.get("flowRunId")
    link = run_url(flow_run_id)
    subject = f"connector {connector.name} ({connector.id}): {_HEADLINES.get(event, event)}"
    lines = [
        f"Connector {connector.name} ({connector.id}) of project {project.name} "
        f"({project.id}): {_HEADLINES.get(event, event)}.",
        f"By: {payload.get('actor')}",
    ]
    if payload.get("reason"):
        lines.append(f"Reason: {payload['reason']}")
    if link:
        lines.append(f"Run: {link}")
    if owners:
        lines.append(f"Owners: {', '.join(owners)}")
    lines.append(f"At: {occurred}")
    details = {k: v for k, v in payload.items() if k not in ("actor", "reason", "changes")}
    return {
        "subject": subject,
        "text": "\n".join(lines),
        "event": event,
        "occurred": occurred,
        "actor": payload.get("actor"),
        "reason": payload.get("reason"),
        "runUrl": link,
        "details": details,
        "connector": {
            "id": connector.id,
            "name": connector.name,
            "labels": connector.labels,
            "owners": owners,
            "project": {"id": project.id, "name": project.name},
        },
    }


__all__ = [
    "DELIVERY_HEADER",
    "EVENT_HEADER",
    "SIGNATURE_HEADER",
    "SIGNED_WEBHOOK",
    "DeliveryFailed",
    "SignedWebhook",
    "check_channels",
    "failure",
    "load_channel",
    "message",
    "run_url",
    "signature",
]
