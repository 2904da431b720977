"""Deciding what became of each send: sent, retrying, failed or unknown, and what the timeline says.

Every outcome lands on the incident timeline. An at-most-once page whose send may have gone out
is recorded ``unknown`` rather than retried; a failure that may pass is retried with exponential
backoff until ``max_attempts``.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any, Protocol

from oncall_server.incidents.changes import Change
from oncall_server.paging.deliveries import Delivery
from oncall_server.paging.outbox import UNKNOWN
from oncall_server.paging.outcomes import Outcomes, UnknownOutcome, timeline_entry


class _Notification(Protocol):
    """The outbox columns an outcome's timeline entry names (an ``OutboxRow`` or a result row)."""

    @property
    def id(self) -> str: ...
    @property
    def tenant_id(self) -> str: ...
    @property
    def incident_id(self) -> str: ...
    @property
    def user_id(self) -> str: ...
    @property
    def channel(self) -> str: ...
    @property
    def tier(self) -> int: ...
    @property
    def attempts(self) -> int: ...


def note_outcome(
    outcomes: Outcomes,
    row: _Notification,
    service_id: str,
    message: str,
    status: str,
    error: str,
    now: datetime,
) -> None:
    """Add one page's outcome to ``outcomes``: its timeline entry and the change-feed message."""
    entry = timeline_entry(
        row.tenant_id,
        row.incident_id,
        message,
        {
            "notification_id": row.id,
            "user_id": row.user_id,
            "channel": row.channel,
            "attempts": str(row.attempts),
            "tier": str(row.tier),
            "status": status,
            "error": error,
        },
        now,
    )
    outcomes.entries.append(entry)
    outcomes.changes.append(Change(row.tenant_id, service_id, row.incident_id, entry["id"]))


def retry_delay(attempts: int, base_seconds: float, max_seconds: float) -> float:
    """Seconds before the next attempt after ``attempts`` of them: doubling from ``base_seconds``."""
    return float(min(base_seconds * 2 ** (attempts - 1), max_seconds))


def decide_outcomes(
    deliveries: Sequence[Delivery],
    now: datetime,
    *,
    max_attempts: int,
    retry_base_seconds: float,
    retry_max_seconds: float,
) -> Outcomes:
    """The outbox updates, timeline entries and change-feed messages of sent (or failed) pages."""
    outcomes = Outcomes([], [], [], [])
    for delivery in deliveries:
        row = delivery.row
        who = delivery.user_name or row.user_id
        outcome: dict[str, Any] = {
            "b_id": row.id,
            "b_attempts": row.attempts,
            "status": "sent",
            "sent_at": None,
            "next_attempt_at": row.next_attempt_at,
            "last_error": delivery.error,
        }
        if not delivery.error:
            outcome["sent_at"] = now
            outcomes.sent_lags.append((row.channel, max(0.0, (now - row.next_attempt_at).total_seconds())))
            message = f"Notified {who} via {row.channel}"
        elif delivery.unknown and delivery.at_most_once:
            unknown = UnknownOutcome(row.id, row.incident_id, row.channel, who, delivery.error)
            outcome["status"], message = UNKNOWN, unknown.message()
            outcomes.unknown.append(unknown)
        elif delivery.retryable and row.attempts < max_attempts:
            delay = retry_delay(row.attempts, retry_base_seconds, retry_max_seconds)
            outcome["status"], outcome["next_attempt_at"] = "retrying", now + timedelta(seconds=delay)
            message = f"Could not notify {who} via {row.channel}: {delivery.error}; retrying in {delay:g}s"
        else:
            outcome["status"] = "failed"
            message = (
                f"Failed to notify {who} via {row.channel} after {row.attempts} attempt(s): {delivery.error}"
            )
        note_outcome(outcomes, row, delivery.service_id, message, outcome["status"], delivery.error, now)
        if outcome["status"] == "retrying":
            outcome["status"] = "pending"
        outcomes.updates.append(outcome)
    return outcomes
