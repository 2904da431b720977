"""Authentication of gRPC calls: one interceptor, deciding from each method's descriptor.

Methods that take an API token (:func:`oncall_server.faces.auth.credential_for`) are
authenticated before their handler runs, and the handler reads the principal with
:func:`caller`. The others (ingest: integration keys, the Defend service key) pass through:
their key can sit in the request itself, so the core checks it.

Installed inside :class:`~oncall_server.faces.grpc.interceptor.ErrorInterceptor`, so an outage
during the token look-up is ``UNAVAILABLE`` like any other.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextvars import ContextVar
from typing import Any, TypeAlias

import grpc
from google.protobuf.descriptor import ServiceDescriptor
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from oncall_server.configuration.tenants import Principal
from oncall_server.faces.auth import Credential, authenticate, credential_for

Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]
_CALLER: ContextVar[Principal] = ContextVar("oncall_grpc_caller")


def metadata(context: Context, name: str) -> str | None:
    """The first value of a request metadata key, as text."""
    for key, value in context.invocation_metadata() or ():
        if key == name:
            return value if isinstance(value, str) else value.decode()
    return None


def caller(context: Context) -> Principal:
    """The principal the interceptor authenticated for this call (API-token methods only)."""
    try:
        return _CALLER.get()
    except LookupError:
        raise RuntimeError("caller() in a method that takes no API token") from None


def token_paths(services: Iterable[ServiceDescriptor]) -> frozenset[str]:
    """The call paths (``/package.Service/Method``) of every method that takes an API token."""
    return frozenset(
        f"/{service.full_name}/{method.name}"
        for service in services
        for method in service.methods
        if credential_for(method) is Credential.API_TOKEN
    )


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Authenticates the API-token methods of ``services``; other paths (ingest, health,
    reflection) are handed on untouched."""

    def __init__(
        self, sessions: async_sessionmaker[AsyncSession], services: Iterable[ServiceDescriptor]
    ) -> None:
        self.sessions = sessions
        self.paths = token_paths(services)

    async def _authenticate(self, context: Context) -> Principal:
        return await authenticate(self.sessions, metadata(context, "authorization"))

    def _unary(self, behavior: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        async def call(request: Any, context: Context) -> Any:
            token = _CALLER.set(await self._authenticate(context))
            try:
                return await behavior(request, context)
            finally:
                _CALLER.reset(token)

        return call

    def _stream(self, behavior: Callable[..., AsyncIterator[Any]]) -> Callable[..., AsyncIterator[Any]]:
        async def call(request: Any, context: Context) -> AsyncIterator[Any]:
            # Not reset: each call runs in its own task, and a generator may be closed elsewhere.
            _CALLER.set(await self._authenticate(context))
            async for item in behavior(request, context):
                yield item

        return call

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        if handler is None or str(handler_call_details.method) not in self.paths:
            return handler
        serial = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(self._unary(handler.unary_unary), **serial)
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(self._unary(handler.stream_unary), **serial)
        if handler.unary_stream:
            streaming: Any = handler.unary_stream  # an async generator under grpc.aio
            return grpc.unary_stream_rpc_method_handler(self._stream(streaming), **serial)
        raise RuntimeError(f"{handler_call_details.method}: no authenticated form of this call shape")
