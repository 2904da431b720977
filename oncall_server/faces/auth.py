"""Who may call what, and how a caller's API token is read: shared by every face.

:data:`CREDENTIAL_RULES` is plain data over the ``oncall.v1`` service descriptors, so a face
generated from the same descriptors (the gRPC interceptor today, a JSON API next) walks it
instead of listing methods: every method takes an API token unless a rule names another
credential, so a new admin RPC is authenticated without anyone remembering to.
"""

from __future__ import annotations

import enum

from google.protobuf.descriptor import MethodDescriptor
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from oncall_server.configuration import tenants


class Credential(enum.Enum):
    """The credential a method takes."""

    API_TOKEN = "api_token"
    """``authorization: Bearer <token>``, checked by the face before the handler runs."""
    INTEGRATION_KEY = "integration_key"
    """A sender's key, in the request or ``x-integration-key``: the core resolves it per alert."""
    DEFEND_SERVICE_KEY = "defend_service_key"
    """The shared Defend service key in ``x-integration-key``, checked by the core."""


CREDENTIAL_RULES: dict[str, Credential] = {
    # Senders hold integration keys, not API tokens; the key may sit in each streamed message.
    "oncall.v1.IngestService": Credential.INTEGRATION_KEY,
    "oncall.v1.IngestService.CreateEscalation": Credential.DEFEND_SERVICE_KEY,
}
"""Exceptions to :attr:`Credential.API_TOKEN`, by method full name, else by service full name."""


def credential_for(method: MethodDescriptor) -> Credential:
    """The credential ``method`` takes (:data:`CREDENTIAL_RULES`, else an API token)."""
    return CREDENTIAL_RULES.get(
        method.full_name, CREDENTIAL_RULES.get(method.containing_service.full_name, Credential.API_TOKEN)
    )


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` value (scheme in any case); None when the
    value is missing or names another scheme."""
    scheme, _, token = (authorization or "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None


async def authenticate(
    sessions: async_sessionmaker[AsyncSession], authorization: str | None
) -> tenants.Principal:
    """The principal of an ``Authorization`` value; UNAUTHENTICATED without saying why."""
    return await tenants.authenticate_token(sessions, bearer_token(authorization))
