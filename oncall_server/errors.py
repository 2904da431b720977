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
    """Base of every error a caller may see."""

    grpc_code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    http_status: int = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(OncallError):
    """The request is malformed; nothing was changed."""

    grpc_code = grpc.StatusCode.INVALID_ARGUMENT
    http_status = 400

    def __init__(self, message: str, violations: list[FieldViolation] | None = None) -> None:
        super().__init__(message)
        self.violations = violations or []

    @classmethod
    def field(cls, field: str, description: str) -> InvalidArgument:
        """One bad field, named in both the message and the details."""
        return cls(f"{field}: {description}", [FieldViolation(field, description)])


class PayloadTooLarge(InvalidArgument):
    """The body exceeds the configured limit."""

    http_status = 413


class Unauthenticated(OncallError):
    """Missing or unknown credentials. Never says which."""

    grpc_code = grpc.StatusCode.UNAUTHENTICATED
    http_status = 401


class PermissionDenied(OncallError):
    """Known caller, forbidden action."""

    grpc_code = grpc.StatusCode.PERMISSION_DENIED
    http_status = 403


class NotFound(OncallError):
    """No such object for this tenant (also for other tenants' objects)."""

    grpc_code = grpc.StatusCode.NOT_FOUND
    http_status = 404


class AlreadyExists(OncallError):
    """A unique name or key is taken."""

    grpc_code = grpc.StatusCode.ALREADY_EXISTS
    http_status = 409


class FailedPrecondition(OncallError):
    """The object is not in a state that allows the action."""

    grpc_code = grpc.StatusCode.FAILED_PRECONDITION
    http_status = 409


class ResourceExhausted(OncallError):
    """Rate limited or overloaded; retry after the hint."""

    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED
    http_status = 429

    def __init__(self, message: str, retry_after_seconds: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_seconds = retry_after_seconds


class Unavailable(OncallError):
    """A dependency (database, Redis) is down; safe to retry."""

    grpc_code = grpc.StatusCode.UNAVAILABLE
    http_status = 503
