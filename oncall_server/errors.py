"""Domain errors.

Each carries the gRPC status and HTTP status it maps to, so the gRPC
interceptor and the HTTP gateway translate the same exception the same way.
Messages are shown to callers: they name the problem and never include
secrets or internals.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc


@dataclass(frozen=True)
class FieldViolation:
    """One invalid field, as in google.rpc.BadRequest."""

    field: str
    description: str


class OncallError(Exception):
    """Base of every error a caller may see.

    A subclass names its statuses in its bases, ``class NotFound(OncallError,
    grpc_code=grpc.StatusCode.NOT_FOUND, http_status=404)``; one it leaves out is inherited.
    """

    grpc_code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    http_status: int = 500

    def __init_subclass__(
        cls, grpc_code: grpc.StatusCode | None = None, http_status: int | None = None
    ) -> None:
        super().__init_subclass__()
        if grpc_code is not None:
            cls.grpc_code = grpc_code
        if http_status is not None:
            cls.http_status = http_status

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(OncallError, grpc_code=grpc.StatusCode.INVALID_ARGUMENT, http_status=400):
    """The request is malformed; nothing was changed."""

    def __init__(self, message: str, violations: list[FieldViolation] | None = None) -> None:
        super().__init__(message)
        self.violations = violations or []

    @classmethod
    def field(cls, field: str, description: str) -> InvalidArgument:
        """One bad field, named in both the message and the details."""
        return cls(f"{field}: {description}", [FieldViolation(field, description)])


class PayloadTooLarge(InvalidArgument, http_status=413):
    """The body exceeds the configured limit."""


class Unauthenticated(OncallError, grpc_code=grpc.StatusCode.UNAUTHENTICATED, http_status=401):
    """Missing or unknown credentials. Never says which."""


class PermissionDenied(OncallError, grpc_code=grpc.StatusCode.PERMISSION_DENIED, http_status=403):
    """Known caller, forbidden action."""


class NotFound(OncallError, grpc_code=grpc.StatusCode.NOT_FOUND, http_status=404):
    """No such object for this tenant (also for other tenants' objects)."""


class AlreadyExists(OncallError, grpc_code=grpc.StatusCode.ALREADY_EXISTS, http_status=409):
    """A unique name or key is taken."""


class FailedPrecondition(OncallError, grpc_code=grpc.StatusCode.FAILED_PRECONDITION, http_status=409):
    """The object is not in a state that allows the action."""


class ResourceExhausted(OncallError, grpc_code=grpc.StatusCode.RESOURCE_EXHAUSTED, http_status=429):
    """Rate limited or overloaded; retry after the hint."""

    def __init__(self, message: str, retry_after_seconds: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_seconds = retry_after_seconds


class Unavailable(OncallError, grpc_code=grpc.StatusCode.UNAVAILABLE, http_status=503):
    """A dependency (database, Redis) is down; safe to retry."""
