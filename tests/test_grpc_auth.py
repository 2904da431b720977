"""Every method of every ``oncall.v1`` service refuses a caller without the right credential.

The methods come from the generated descriptors, not from a list in this file: a new admin RPC
is checked here the day it is added, and fails here if the server answers it without a token.
Only ``IngestService`` takes another credential (integration keys, the Defend service key).
"""

from __future__ import annotations

import asyncio
import importlib
import pkgutil
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import pytest
from google.protobuf import message_factory
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message import Message

from oncall_server.api import v1 as api_v1
from oncall_server.faces.auth import Credential, credential_for
from oncall_server.faces.grpc.auth import AuthInterceptor
from oncall_server.faces.grpc.interceptor import ErrorInterceptor
from oncall_server.faces.grpc.registry import SERVICES
from oncall_server.testing import RunningServer, bootstrap

TOKEN_REFUSED = "a valid API token is required (authorization: Bearer <token>)"
NOT_ASCII = "credentials must be ASCII text"
NOT_TOKEN_SERVICES = {"oncall.v1.IngestService"}
"""The services whose methods take no API token: senders hold integration keys."""


def _all_methods() -> list[MethodDescriptor]:
    methods: list[MethodDescriptor] = []
    for module_info in pkgutil.iter_modules(api_v1.__path__):
        if module_info.name.endswith("_pb2"):
            module = importlib.import_module(f"{api_v1.__name__}.{module_info.name}")
            for service in module.DESCRIPTOR.services_by_name.values():
                methods += service.methods
    return methods


METHODS = _all_methods()
ADMIN_METHODS = [m for m in METHODS if m.containing_service.full_name not in NOT_TOKEN_SERVICES]
INGEST_METHODS = [m for m in METHODS if m.containing_service.full_name in NOT_TOKEN_SERVICES]
BAD_AUTHORIZATION: dict[str, list[tuple[str, str]]] = {
    "missing": [],
    "bearer-without-token": [("authorization", "Bearer")],
    "bearer-blank-token": [("authorization", "Bearer    ")],
    "another-scheme": [("authorization", "Basic x")],
    "no-scheme": [("authorization", "oct_" + "A" * 43)],
    "unknown-token": [("authorization", "Bearer oct_" + "A" * 43)],
    "not-a-token": [("authorization", "Bearer x")],
}


def _path(method: MethodDescriptor) -> str:
    return f"/{method.containing_service.full_name}/{method.name}"


def _request(method: MethodDescriptor, **fields: Any) -> Message:
    message: Message = message_factory.GetMessageClass(method.input_type)(**fields)
    return message


async def _call(
    channel: grpc.aio.Channel, method: MethodDescriptor, request: Message, metadata: list[tuple[str, str]]
) -> tuple[grpc.StatusCode, str]:
    """Call ``method`` in its own shape with one request message; its final code and details."""
    serial: dict[str, Callable[..., Any]] = {
        "request_serializer": type(request).SerializeToString,
        "response_deserializer": message_factory.GetMessageClass(method.output_type).FromString,
    }
    path = _path(method)
    call: Any
    if method.client_streaming and method.server_streaming:
        call = channel.stream_stream(path, **serial)(iter([request]), metadata=metadata)
    elif method.client_streaming:
        call = channel.stream_unary(path, **serial)(iter([request]), metadata=metadata)
    elif method.server_streaming:
        call = channel.unary_stream(path, **serial)(request, metadata=metadata)
    else:
        call = channel.unary_unary(path, **serial)(request, metadata=metadata)
    async with asyncio.timeout(10):  # an unauthenticated stream must end, not wait for changes
        return await call.code(), await call.details()


def test_every_service_is_served_and_only_ingest_takes_no_token() -> None:
    served = {entry.name for entry in SERVICES}
    assert served == {m.containing_service.full_name for m in METHODS}
    assert ADMIN_METHODS and INGEST_METHODS
    for method in ADMIN_METHODS:
        assert credential_for(method) is Credential.API_TOKEN, method.full_name
    for method in INGEST_METHODS:
        assert credential_for(method) is not Credential.API_TOKEN, method.full_name


async def test_admin_methods_refuse_a_missing_malformed_or_unknown_token(server: RunningServer) -> None:
    tenant = await bootstrap(server.app)
    wrong: list[str] = []
    async with grpc.aio.insecure_channel(server.grpc_target) as channel:
        for method in ADMIN_METHODS:
            for case, metadata in BAD_AUTHORIZATION.items():
                code, details = await _call(channel, method, _request(method), metadata)
                if (code, details) != (grpc.StatusCode.UNAUTHENTICATED, TOKEN_REFUSED):
                    wrong.append(f"{method.full_name} with {case}: {code.name} {details!r}")
            # An integration key is no API token, wherever it is put.
            as_key = [("x-integration-key", tenant.integration_key)]
            code, _ = await _call(channel, method, _request(method), as_key)
            if code != grpc.StatusCode.UNAUTHENTICATED:
                wrong.append(f"{method.full_name} with an integration key: {code.name}")
    assert not wrong, "\n".join(wrong)


async def test_ingest_methods_refuse_a_missing_or_unknown_key(server: RunningServer) -> None:
    tenant = await bootstrap(server.app)
    wrong: list[str] = []
    async with grpc.aio.insecure_channel(server.grpc_target) as channel:
        for method in INGEST_METHODS:
            in_request = "integration_key" in method.input_type.fields_by_name
            unknown_key = "oci_" + "A" * 43
            cases = {
                "missing": (_request(method), []),
                "unknown": (
                    _request(method, **({"integration_key": unknown_key} if in_request else {})),
                    [("x-integration-key", unknown_key)],
                ),
                # An API token is no integration key.
                "api-token": (_request(method), tenant.auth),
            }
            for case, (request, metadata) in cases.items():
                code, details = await _call(channel, method, request, metadata)
                if code != grpc.StatusCode.UNAUTHENTICATED:
                    wrong.append(f"{method.full_name} with a {case} key: {code.name} {details!r}")
    assert not wrong, "\n".join(wrong)


async def _one(request: Message) -> AsyncIterator[Message]:
    yield request


class _Context:
    """What a handler sees of a call whose metadata no gRPC client will send (non-ASCII)."""

    def __init__(self, metadata: list[tuple[str, str]]) -> None:
        self.metadata = metadata
        self.status: tuple[grpc.StatusCode, str] | None = None

    def invocation_metadata(self) -> list[tuple[str, str]]:
        return self.metadata

    async def abort(self, code: grpc.StatusCode, details: str = "", trailing_metadata: Any = ()) -> None:
        self.status = (code, details)
        raise grpc.aio.AbortError()


@pytest.mark.parametrize(
    ("value", "message"),
    [("Bearer \u00e9t\u00e9", TOKEN_REFUSED), ("Bearer oct_\u00e9t\u00e9", NOT_ASCII)],
    ids=["non-ascii", "non-ascii-after-prefix"],
)
async def test_admin_methods_refuse_a_non_ascii_token(
    server: RunningServer, value: str, message: str
) -> None:
    """gRPC clients refuse to send non-ASCII metadata, so the interceptors (error mapping outside,
    auth inside, as the server installs them) get such a call by hand; no handler may run."""
    services = [entry.descriptor for entry in SERVICES]
    errors, auth = ErrorInterceptor(), AuthInterceptor(server.app.sessions, services)
    ran: list[str] = []

    async def unary(request: Any, context: Any) -> Any:
        ran.append("unary")

    async def streaming(request: Any, context: Any) -> AsyncIterator[Any]:
        ran.append("stream")
        yield None

    wrong: list[str] = []
    for method in ADMIN_METHODS:
        if method.server_streaming:
            inner = grpc.unary_stream_rpc_method_handler(streaming)
        elif method.client_streaming:
            inner = grpc.stream_unary_rpc_method_handler(unary)
        else:
            inner = grpc.unary_unary_rpc_method_handler(unary)

        async def innermost(_details: Any, inner: Any = inner) -> Any:
            return inner

        details: Any = type("Details", (), {"method": _path(method), "invocation_metadata": ()})()

        async def through_auth(d: Any) -> Any:
            return await auth.intercept_service(innermost, d)

        handler = await errors.intercept_service(through_auth, details)
        assert handler is not None
        context = _Context([("authorization", value)])
        with pytest.raises(grpc.aio.AbortError):
            if method.server_streaming:
                async for _ in handler.unary_stream(_request(method), context):
                    pass
            elif method.client_streaming:
                await handler.stream_unary(_one(_request(method)), context)
            else:
                await handler.unary_unary(_request(method), context)
        if context.status != (grpc.StatusCode.UNAUTHENTICATED, message):
            wrong.append(f"{method.full_name}: {context.status}")
    assert not wrong, "\n".join(wrong)
    assert ran == []
