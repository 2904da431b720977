"""What a failure of the database or Redis means for the caller.

Three kinds matter, and every face and write path asks this one module which it has:

- *transient*: a deadlock, a serialization failure, SQLite's lock timeout. The same transaction
  run again will very likely succeed, so the core retries it and the caller never sees it.
- *outage*: the database or Redis cannot be reached (refused, reset, timed out, restarting).
  The caller gets ``UNAVAILABLE`` / 503 with a retry hint: senders that retry only 5xx must retry.
- *refusal*: the database refused the data itself (a constraint, a value it cannot hold). The
  same rows fail again; the request that carried them gets INVALID_ARGUMENT, not its neighbours.
- anything else is a bug.
"""

from __future__ import annotations

import asyncio
import sqlite3

import asyncpg.exceptions
import redis.exceptions
from sqlalchemy import exc as sa_exc

from oncall_server.errors import AlreadyExists, FailedPrecondition, Unavailable

# SQLSTATE classes and codes: 08 connection exception, 53 insufficient resources, 57 operator
# intervention (admin shutdown, cannot connect now), 40001 serialization failure, 40P01 deadlock.
_OUTAGE_SQLSTATE_CLASSES = ("08", "53", "57")
_TRANSIENT_SQLSTATES = ("40001", "40P01")
# 22 data exception (a value the column cannot hold), 23 integrity constraint violation.
_REFUSAL_SQLSTATE_CLASSES = ("22", "23")
# OSErrors about local files say nothing of the database's or Redis's reachability.
_LOCAL_FILE_ERRORS = (
    FileNotFoundError,
    FileExistsError,
    IsADirectoryError,
    NotADirectoryError,
    PermissionError,
)
# asyncpg's own word that the connection is gone, raised without a server's SQLSTATE.
_ASYNCPG_OUTAGES = (asyncpg.exceptions.PostgresConnectionError, asyncpg.exceptions.ClientCannotConnectError)


def _sqlstate(exc: BaseException) -> str:
    for candidate in (
        exc,
        getattr(exc, "orig", None),
        getattr(getattr(exc, "orig", None), "__cause__", None),
    ):
        code = getattr(candidate, "sqlstate", None) or getattr(candidate, "pgcode", None)
        if isinstance(code, str):
            return code
    return ""


def _causes(exc: BaseException) -> list[BaseException]:
    """The exception, what it wraps (``orig``), and its causes: drivers nest theirs several deep."""
    seen: list[BaseException] = []
    pending: list[BaseException | None] = [exc]
    while pending and len(seen) < 8:
        current = pending.pop()
        if current is None or any(current is s for s in seen):
            continue
        seen.append(current)
        orig = getattr(current, "orig", None)
        pending.extend([current.__cause__, orig if isinstance(orig, BaseException) else None])
    return seen


def is_transient(exc: BaseException) -> bool:
    """A deadlock, serialization failure or lock timeout: run the same transaction again."""
    if not isinstance(exc, sa_exc.DBAPIError) or exc.connection_invalidated:
        return False
    if _sqlstate(exc) in _TRANSIENT_SQLSTATES:
        return True
    text = str(exc.orig).lower()
    return "deadlock" in text or "database is locked" in text


def is_outage(exc: BaseException) -> bool:
    """The database or Redis cannot be reached right now; nothing says the request itself is wrong."""
    for cause in _causes(exc):
        if isinstance(cause, Unavailable | redis.exceptions.ConnectionError | redis.exceptions.TimeoutError):
            return True
        if isinstance(cause, sa_exc.TimeoutError):  # no pooled connection became free in time
            return True
        if isinstance(cause, sa_exc.DBAPIError) and cause.connection_invalidated:
            return True
        if isinstance(cause, _LOCAL_FILE_ERRORS):  # a bug or a misconfiguration, not an outage
            continue
        if isinstance(cause, OSError | TimeoutError | asyncio.TimeoutError | ConnectionError):
            return True
        if _sqlstate(cause)[:2] in _OUTAGE_SQLSTATE_CLASSES:
            return True
        if isinstance(cause, _ASYNCPG_OUTAGES):
            return True
        if isinstance(cause, sqlite3.OperationalError) and "unable to open" in str(cause).lower():
            return True
    return False


def is_refusal(exc: BaseException) -> bool:
    """The database refused the data itself: running the same rows again fails again, and nothing
    says the database is unwell (asyncpg reports data errors as a plain DBAPIError: by SQLSTATE)."""
    for cause in _causes(exc):
        if isinstance(cause, sa_exc.IntegrityError | sa_exc.DataError | UnicodeError):
            return True
        if _sqlstate(cause)[:2] in _REFUSAL_SQLSTATE_CLASSES:
            return True
    return False


def as_unavailable(exc: BaseException) -> Unavailable | None:
    """The error a caller should see for an outage (503 / UNAVAILABLE, retry), or None if it is not one."""
    if isinstance(exc, Unavailable):
        return exc
    if is_outage(exc):
        return Unavailable("the database or Redis is unavailable; retry shortly")
    return None


def is_unique_violation(exc: sa_exc.IntegrityError) -> bool:
    """A UNIQUE (or primary key) constraint refused the row: the name or key is taken."""
    orig = exc.orig
    if getattr(orig, "sqlstate", None) == "23505":  # PostgreSQL unique_violation
        return True
    name = str(getattr(orig, "sqlite_errorname", ""))
    return name in ("SQLITE_CONSTRAINT_UNIQUE", "SQLITE_CONSTRAINT_PRIMARYKEY")


def is_foreign_key_violation(exc: sa_exc.IntegrityError) -> bool:
    """A FOREIGN KEY constraint refused the row: something it refers to does not exist (any more)."""
    orig = exc.orig
    if getattr(orig, "sqlstate", None) == "23503":  # PostgreSQL foreign_key_violation
        return True
    return str(getattr(orig, "sqlite_errorname", "")) == "SQLITE_CONSTRAINT_FOREIGNKEY"


def integrity_error(exc: sa_exc.IntegrityError, *, taken: str, missing: str) -> Exception:
    """The error a caller sees for a constraint violation on create or update.

    ``AlreadyExists(taken)`` only for a unique violation; a foreign-key violation means a referenced
    object is missing (deleted meanwhile): ``FailedPrecondition(missing)``. Anything else (NOT NULL,
    CHECK) is a bug, returned as is so it surfaces as INTERNAL with its traceback in the log.
    Use as ``raise integrity_error(exc, taken=..., missing=...) from None``.
    """
    if is_unique_violation(exc):
        return AlreadyExists(taken)
    if is_foreign_key_violation(exc):
        return FailedPrecondition(missing)
    return exc
