"""Hook specifications: the contract between On-Call and its plugins.

Plugins are packages exposing a module under the ``oncall`` entry-point
group; functions there marked with :data:`hookimpl` implement these hooks.
Hooks are always called with keyword arguments, so new parameters can be
added without breaking existing plugins. Every hook here is documented in
docs/plugins.md (a test checks it).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

import pluggy

from oncall_server.ingest.model import NormalizedEvent

if TYPE_CHECKING:
    from oncall_server.runtime.settings import Settings

hookspec = pluggy.HookspecMarker("oncall")
hookimpl = pluggy.HookimplMarker("oncall")


@dataclass(frozen=True, slots=True)
class AdapterContext:
    """What an adapter may know about the integration a payload arrived on."""

    integration_name: str
    integration_type: str
    headers: Mapping[str, str]


class Adapter(Protocol):
    """Turns one raw payload into normalized alert events; pure: no I/O, no storage."""

    #: The integration type this adapter serves (``Integration.type``), e.g. ``"webhook"``.
    #: Optional class attribute ``overload_http_status``: the status a full ingest queue answers
    #: this sender (default 429; 503 for senders that retry only 5xx, such as Alertmanager).
    name: str

    def parse(self, payload: Any, context: AdapterContext) -> list[NormalizedEvent]:
        """Normalize ``payload`` (decoded JSON). Raise ``InvalidArgument`` naming the bad field."""
        ...


@hookspec
def oncall_register_adapters(register: Callable[[Adapter], None]) -> None:
    """Register source adapters.

    Called once when the plugin manager loads. Call ``register(adapter)`` for
    each adapter the plugin provides; registering a second adapter under a
    name already taken is an error that names both plugins.
    """


@dataclass(frozen=True, slots=True)
class Page:
    """What a notification says: the spec's "What the On-Call Technician Sees".

    The Defend fields are empty for incidents from other sources.
    ``notification_id`` is stable across retries of one notification, so a
    receiver can drop a repeat delivery.
    """

    notification_id: str
    kind: str  # "page" (escalation tier), "assigned" (reassignment) or "test"
    tenant_id: str
    incident_id: str
    incident_url: str
    title: str
    severity: str  # "critical", "high", "medium", "low", "info"
    status: str  # the incident's status when the page was decided
    service_id: str
    service_name: str
    description: str
    source: str
    source_ref: str
    device_name: str
    detection_type: str
    mitre_technique: str
    recommended_action: str
    defend_url: str
    tier: int  # 1-based escalation tier; 0 when not an escalation page
    loop: int  # 0 on the first pass through the policy
    user_id: str
    user_name: str
    user_email: str
    created_at: datetime

    def as_json(self) -> dict[str, Any]:
        """The JSON form webhook receivers get (times as RFC 3339).

        Every field is a str, an int or the datetime: ``dataclasses.asdict``'s recursive deep
        copy was a third of a webhook send's CPU.
        """
        body = {name: getattr(self, name) for name in _PAGE_FIELDS}
        body["created_at"] = self.created_at.isoformat()
        return body


_PAGE_FIELDS = tuple(field.name for field in fields(Page))


@dataclass(frozen=True, slots=True)
class Destination:
    """One contact method of the user being paged."""

    contact_method_id: str
    type: str
    address: str
    secret: str  # per-endpoint signing secret (webhooks); "" when the channel has none


class DeliveryError(Exception):
    """A send failed. ``retryable=False`` stops retries (a 4xx, a refused address)."""

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable


class OutcomeUnknown(DeliveryError):
    """The send may or may not have reached the receiver (it went out, then no answer came).

    An :data:`AT_LEAST_ONCE` channel's page is retried as after any retryable failure; an
    :data:`AT_MOST_ONCE` channel's page is not sent again: it is recorded as ``unknown``.
    """


#: Delivery semantics a channel declares in its ``delivery`` attribute (see :class:`Channel`).
AT_LEAST_ONCE = "at_least_once"
AT_MOST_ONCE = "at_most_once"
DELIVERIES = (AT_LEAST_ONCE, AT_MOST_ONCE)


def delivery_of(channel: object) -> str:
    """A channel's declared delivery semantics; :data:`AT_MOST_ONCE` when it declares none."""
    delivery = getattr(channel, "delivery", AT_MOST_ONCE)
    if delivery not in DELIVERIES:
        raise ValueError(
            f"notification channel {getattr(channel, 'name', channel)!r} declares delivery={delivery!r}; "
            f"choose one of {list(DELIVERIES)}"
        )
    return str(delivery)


class Channel(Protocol):
    """Sends pages through one kind of contact method (``ContactMethod.type``).

    A channel may also declare ``delivery`` (a class attribute; not part of this protocol, so
    channels written before it still type-check), which decides what happens to a page whose
    sender died, or whose send raised :class:`OutcomeUnknown`, before its outcome was known:

    * :data:`AT_LEAST_ONCE` — the receiver drops repeats by ``page.notification_id`` (a webhook
      receiver, a provider with an idempotency key, a log line). The page is sent again, with the
      same notification id, by whichever replica takes it over.
    * :data:`AT_MOST_ONCE` (the default) — a repeat reaches a person twice (an SMS, a phone call,
      an email). The dispatcher durably marks the page before the network call; a page marked so
      whose outcome never came back is not sent again: it is recorded as ``unknown`` on the
      incident timeline, logged as a warning and counted in
      ``oncall_pages_outcome_unknown_total``, and escalation goes on as after a failed page.
    """

    #: The contact method type it serves, e.g. ``"email"``.
    name: str

    def validate_address(self, address: str) -> str:
        """The address in canonical form; raise ``ValueError`` saying what is wrong with it."""
        ...

    async def send(self, page: Page, destination: Destination) -> None:
        """Deliver once (the dispatcher retries); raise :class:`DeliveryError` on failure, and
        :class:`OutcomeUnknown` when the request went out but whether it arrived is unknown."""
        ...

    async def close(self) -> None:
        """Release connections; called once at shutdown."""
        ...


@hookspec
def oncall_register_channels(register: Callable[[Channel], None], settings: Settings) -> None:
    """Register notification channels.

    Called once when the plugin manager loads, with the server's settings (a
    channel reads its own options from them, e.g. the SMTP host). Call
    ``register(channel)`` for each channel; a second channel under a name
    already taken is an error.
    """
