"""The notification outbox, enqueue side: pages are rows first, deliveries second.

A page is written in the same transaction as the state change that decides it (an escalation
step, a reassignment), so a process dying between commit and send loses nothing: the dispatcher
of any replica finds the row (:mod:`oncall_server.paging.dispatcher` claims, sends and records).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import and_, select

from oncall_server.ids import uuid7
from oncall_server.incidents.model import IncidentFacts
from oncall_server.storage import bulk, dialects
from oncall_server.storage.bulk import Executor
from oncall_server.storage.models import ContactMethod, Notification, NotificationRule, User

PAGE = "page"
ASSIGNED = "assigned"

# Outbox statuses: "pending" -> "sending" (claimed: leased, not begun) -> ["delivering" (an
# at-most-once channel's network call has begun)] -> "sent" | "failed" | "unknown"; a retry goes
# back to "pending"; an acknowledgement or resolve "cancelled" pending rows.
SENDING = "sending"
DELIVERING = "delivering"
UNKNOWN = "unknown"


def incident_url(public_url: str, incident_id: str) -> str:
    return f"{public_url.rstrip('/')}/incidents/{incident_id}"


@dataclass(frozen=True, slots=True)
class PageContent(IncidentFacts):
    """Everything a page needs beyond its outbox row, under the names of a ``_CONTENT`` row."""

    user_id: str
    user_name: str
    user_email: str
    contact_method_id: str
    contact_type: str
    address: str
    secret: str = field(repr=False)  # never in logs or tracebacks


@dataclass(frozen=True, slots=True)
class PageRequest:
    """One decision to page people about an incident (an escalation step, a reassignment)."""

    tenant_id: str
    incident_id: str
    user_ids: Sequence[str]
    kind: str
    key: str  # names the decision; with user, contact method and delay it forms the dedup key
    run: int
    tier: int
    loop: int
    incident: IncidentFacts | None = None  # given: claimed rows carry their content to the dispatcher


@dataclass(frozen=True, slots=True)
class Paged:
    """Who one request reached, for the timeline message."""

    user_names: list[str]
    notifications: int


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """The columns of a claimed outbox row the dispatcher needs (plain values, not an ORM object)."""

    id: str
    tenant_id: str
    incident_id: str
    kind: str
    tier: int
    loop: int
    user_id: str
    contact_method_id: str
    channel: str
    attempts: int
    next_attempt_at: datetime
    created_at: datetime
    # Handed over with what the page says: the dispatcher need not read it back.
    content: PageContent | None = None

    @classmethod
    def of(cls, row: Any, content: PageContent | None = None) -> OutboxRow:
        """From a mapping (an inserted row's values) or a result row."""
        get = row.__getitem__ if isinstance(row, dict) else row._mapping.__getitem__
        # Positional, as it runs per claimed row (no dict of keywords). mypy cannot count the star.
        return cls(*[get(name) for name in OUTBOX_COLUMNS], content=content)  # type: ignore[misc]


OUTBOX_COLUMNS = [f.name for f in dataclasses.fields(OutboxRow) if f.name != "content"]


async def enqueue_pages(
    executor: Executor,
    dialect: str,
    requests: Sequence[PageRequest],
    now: datetime,
    *,
    claim_until: datetime | None = None,
    fresh: bool = False,
) -> tuple[list[Paged], list[OutboxRow]]:
    """Write one outbox row per (user, notification rule) in the caller's transaction.

    Rows are unique on ``dedup_key``, so the same decision enqueued twice
    pages nobody twice. A user without rules is paged on every contact method
    at once. One call serves a whole batch of steps: one read and one insert.

    With ``claim_until`` the rows due now are written already claimed (leased
    to this process until then) and returned, so the caller's dispatcher sends
    them straight after the commit without a claim transaction of its own; if
    this process dies first, the lease runs out and any dispatcher sends them.

    ``fresh``: the incidents were created in the caller's transaction, so no row of theirs can be
    in the table yet; the insert then needs no answer and goes with the transaction's next trip
    (``bulk.execute_all``) instead of costing one of its own.
    """
    ids = list({user_id for request in requests for user_id in request.user_ids})
    if not ids:
        return [Paged([], 0) for _ in requests], []
    users: dict[str, Any] = {}
    methods: dict[str, list[str]] = {}
    method_of: dict[str, Any] = {}
    rule_rows: list[tuple[str, str, str, int]] = []
    for row in await bulk.fetch_by_keys(executor, _PAGING_DIRECTORY, ids):
        users[row.id] = row
        if row.method_id is not None and row.method_id not in method_of:
            method_of[row.method_id] = row
            methods.setdefault(row.id, []).append(row.method_id)
        if row.rule_id is not None:
            rule_rows.append((row.rule_id, row.id, row.method_id, row.delay_seconds))
    for user_methods in methods.values():
        user_methods.sort()
    rules: dict[str, list[tuple[str, int]]] = {}
    for _rule_id, user_id, method_id, delay in sorted(rule_rows):
        rules.setdefault(user_id, []).append((method_id, delay))
    rows: list[dict[str, Any]] = []
    keys: set[str] = set()
    results: list[Paged] = []
    for request in requests:
        names: list[str] = []
        before = len(rows)
        for user_id in dict.fromkeys(request.user_ids):
            user = users.get(user_id)
            if user is None or user.tenant_id != request.tenant_id:
                continue
            names.append(user.name)
            chosen = rules.get(user_id) or [(method_id, 0) for method_id in methods.get(user_id, [])]
            for method_id, delay in chosen:
                dedup_key = f"{request.key}:{user_id}:{method_id}:{delay}"
                if dedup_key in keys:  # two rules alike: one page
                    continue
                keys.add(dedup_key)
                claimed = claim_until is not None and delay == 0
                rows.append(
                    {
                        "id": uuid7(),
                        "tenant_id": request.tenant_id,
                        "incident_id": request.incident_id,
                        "kind": request.kind,
                        "dedup_key": dedup_key,
                        "escalation_run": request.run,
                        "tier": request.tier,
                        "loop": request.loop,
                        "user_id": user_id,
                        "contact_method_id": method_id,
                        "channel": method_of[method_id].channel,
                        "status": SENDING if claimed else "pending",
                        "attempts": 1 if claimed else 0,
                        "next_attempt_at": now + timedelta(seconds=delay),
                        "lease_until": claim_until if claimed else None,
                        "last_error": "",
                        "created_at": now,
                        "sent_at": None,
                    }
                )
        results.append(Paged(names, len(rows) - before))
    if not rows:
        return results, []
    if fresh:
        await bulk.execute_all(executor, [(bulk.insert_into(Notification), rows)])
        inserted = {row["id"] for row in rows}
    else:
        inserted = {
            row_id
            for (row_id,) in await executor.execute(
                _insert_notifications(dialect).returning(Notification.id), rows
            )
        }
    facts = {request.incident_id: request.incident for request in requests if request.incident is not None}
    claimed_rows = [
        OutboxRow.of(row, _content(facts.get(row["incident_id"]), method_of[row["contact_method_id"]]))
        for row in rows
        if row["status"] == SENDING and row["id"] in inserted
    ]
    return results, claimed_rows


def _content(facts: IncidentFacts | None, method: Any) -> PageContent | None:
    """A claimed row's content from the incident in hand and its ``_PAGING_DIRECTORY`` row."""
    if facts is None:
        return None
    return PageContent(
        facts.tenant_id,
        facts.incident_id,
        facts.service_id,
        facts.service_name,
        facts.title,
        facts.severity,
        facts.status,
        facts.description,
        facts.source,
        facts.source_ref,
        facts.details,
        method.id,
        method.name,
        method.email,
        method.method_id,
        method.channel,
        method.address,
        method.secret,
    )


# Whom a batch of pages reaches and how, in one query: users, their contact methods (by id) and
# their notification rules (by id; a method without rules yields one row with rule_id NULL).
_PAGING_DIRECTORY = bulk.KeyedSelect(
    select(
        User.id,
        User.tenant_id,
        User.name,
        User.email,
        ContactMethod.id.label("method_id"),
        ContactMethod.type.label("channel"),
        ContactMethod.address,
        ContactMethod.secret,
        NotificationRule.id.label("rule_id"),
        NotificationRule.delay_seconds,
    )
    .outerjoin(ContactMethod, ContactMethod.user_id == User.id)
    .outerjoin(
        NotificationRule,
        and_(NotificationRule.contact_method_id == ContactMethod.id, NotificationRule.user_id == User.id),
    ),
    User.id,
    "user_id",
)


def _insert_notifications(dialect: str) -> Any:
    return dialects.named(dialect).insert(Notification).on_conflict_do_nothing(index_elements=["dedup_key"])


class LocalDispatcher(Protocol):
    """This process's dispatcher, as those who enqueue pages see it."""

    def wake(self) -> None:
        """Pages were enqueued: look for them now rather than at the next poll."""
        ...

    def claim_until(self) -> datetime | None:
        """A lease for rows due now, written already claimed for :meth:`take`; None: leave them pending."""
        ...

    def take(self, rows: Sequence[OutboxRow]) -> None:
        """Send rows a committed transaction wrote already claimed; returns at once."""
        ...
