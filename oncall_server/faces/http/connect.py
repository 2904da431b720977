"""The Connect protocol's unary form on the HTTP gateway: every unary RPC of every service in
:data:`~oncall_server.faces.grpc.registry.SERVICES` is ``POST /<package.Service>/<Method>``, so
``buf curl --protocol connect``, ``curl`` and Connect clients call the same servicers as gRPC.

Nothing here is written per method: the routes come from the service descriptors, and each call
runs through the gRPC face's own handler chain (:func:`~oncall_server.faces.grpc.registry.interceptors`:
the error mapping, the auth check deciding from the method descriptor, the request checks) with a
context object standing in for gRPC's. So the credential a method takes, the principal its
servicer sees, the request checks and the status of every error are the gRPC face's; this module
only moves them between HTTP and the chain:

* requests: ``Content-Type: application/json`` (proto3 JSON, unknown fields refused) or
  ``application/proto`` (binary); methods marked ``NO_SIDE_EFFECTS`` also answer Connect's ``GET``
  form (``?encoding=json&message=...``). Headers become the call's metadata, lower-cased, as gRPC
  clients send them (``authorization: Bearer ...``, ``x-integration-key``, ``idempotency-key``).
  ``Connect-Timeout-Ms`` bounds the call (``deadline_exceeded``).
* answers: 200 with the response message in the request's encoding (JSON: lowerCamelCase names,
  enums by name, 64-bit integers as strings); an error is Connect's JSON body
  ``{"code", "message", "details"}`` with the HTTP status of Connect's table (:data:`CODES`), the
  details being the gRPC status details (``google.rpc.BadRequest``, ``google.rpc.RetryInfo``).
* streaming methods (``WatchIncidents``, ``IngestAlerts``) answer ``unimplemented`` (501): Connect
  streaming is not served yet; a path under a package no method has answers ``unimplemented``
  with 404, an encoding other than JSON or binary protobuf 415.

Spec: https://connectrpc.com/docs/protocol.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from aiohttp import web
from google.protobuf import any_pb2, descriptor_pool, json_format, message_factory
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.descriptor_pb2 import MethodOptions
from google.protobuf.message import DecodeError, Message
from google.rpc import error_details_pb2, status_pb2  # type: ignore[import-untyped]

from oncall_server import json_codec
from oncall_server.errors import InvalidArgument, OncallError, PayloadTooLarge
from oncall_server.faces.grpc.interceptor import Undecodable, to_status
from oncall_server.faces.grpc.registry import SERVICES, interceptors
from oncall_server.runtime.app import App

log = logging.getLogger(__name__)

CODES: dict[grpc.StatusCode, tuple[str, int]] = {
    grpc.StatusCode.CANCELLED: ("canceled", 499),
    grpc.StatusCode.UNKNOWN: ("unknown", 500),
    grpc.StatusCode.INVALID_ARGUMENT: ("invalid_argument", 400),
    grpc.StatusCode.DEADLINE_EXCEEDED: ("deadline_exceeded", 504),
    grpc.StatusCode.NOT_FOUND: ("not_found", 404),
    grpc.StatusCode.ALREADY_EXISTS: ("already_exists", 409),
    grpc.StatusCode.PERMISSION_DENIED: ("permission_denied", 403),
    grpc.StatusCode.RESOURCE_EXHAUSTED: ("resource_exhausted", 429),
    grpc.StatusCode.FAILED_PRECONDITION: ("failed_precondition", 400),
    grpc.StatusCode.ABORTED: ("aborted", 409),
    grpc.StatusCode.OUT_OF_RANGE: ("out_of_range", 400),
    grpc.StatusCode.UNIMPLEMENTED: ("unimplemented", 501),
    grpc.StatusCode.INTERNAL: ("internal", 500),
    grpc.StatusCode.UNAVAILABLE: ("unavailable", 503),
    grpc.StatusCode.DATA_LOSS: ("data_loss", 500),
    grpc.StatusCode.UNAUTHENTICATED: ("unauthenticated", 401),
}
"""Each gRPC status code as Connect names it, and the HTTP status Connect's specification gives it."""

JSON, PROTO = "application/json", "application/proto"
_ENCODINGS = {"json": JSON, "proto": PROTO}
_DETAILS_KEY = "grpc-status-details-bin"
_PACKAGE_PATH = r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)+"
"""A ``package.Service`` path segment: what the catch-all route answers ``unimplemented`` for."""


# --- errors: one place from a gRPC status to Connect's body ------------------------------------


def _detail(packed: any_pb2.Any) -> dict[str, Any]:
    """A status detail as Connect writes it: type name, unpadded base64 of the message, and the
    message as JSON under ``debug`` when this server knows its type."""
    type_name = packed.TypeName()
    detail: dict[str, Any] = {"type": type_name, "value": base64.b64encode(packed.value).decode().rstrip("=")}
    try:
        found = descriptor_pool.Default().FindMessageTypeByName(type_name)
        message = message_factory.GetMessageClass(found)()
    except KeyError:
        return detail
    if packed.Unpack(message):
        detail["debug"] = json_format.MessageToDict(message)
    return detail


def _retry_after(details: Iterable[any_pb2.Any]) -> dict[str, str]:
    """``Retry-After`` from a ``RetryInfo`` detail (as the gateway's own 429 and 503 carry it)."""
    for packed in details:
        retry = error_details_pb2.RetryInfo()
        if packed.Is(retry.DESCRIPTOR) and packed.Unpack(retry):
            return {"Retry-After": str(max(1, round(retry.retry_delay.ToMilliseconds() / 1000)))}
    return {}


def error_response(
    code: grpc.StatusCode,
    message: str,
    details: Sequence[any_pb2.Any] = (),
    *,
    http_status: int | None = None,
) -> web.Response:
    """Connect's error answer for a gRPC status: ``{"code", "message", "details"}`` with the HTTP
    status of :data:`CODES` (``http_status`` only where the specification says otherwise)."""
    name, status = CODES.get(code, CODES[grpc.StatusCode.UNKNOWN])
    body: dict[str, Any] = {"code": name, "message": message}
    if details:
        body["details"] = [_detail(packed) for packed in details]
    return web.json_response(body, status=http_status or status, headers=_retry_after(details))


def _status_response(status: grpc.Status | _Aborted) -> web.Response:
    """The answer for a status as gRPC would send it: code, details text, trailing metadata."""
    details: list[any_pb2.Any] = []
    for key, value in status.trailing_metadata or ():
        if key == _DETAILS_KEY:
            details = list(status_pb2.Status.FromString(value).details)
    return error_response(status.code, status.details or "", details)


def oncall_error_response(error: OncallError) -> web.Response:
    """A domain error, mapped by the gRPC face's :func:`to_status` (the one mapping)."""
    return _status_response(to_status(error))


# --- the call: the gRPC handler chain with a stand-in context -----------------------------------


class _Aborted(grpc.aio.AbortError):
    """``context.abort`` of a call made here: the status the chain ended the call with."""

    def __init__(self, code: grpc.StatusCode, details: str, trailing_metadata: Any) -> None:
        super().__init__(details)
        self.code = code
        self.details = details
        self.trailing_metadata = tuple(trailing_metadata or ())


class _Context:
    """What the handler chain and the servicers use of ``grpc.aio.ServicerContext``: the metadata
    (the request's headers), ``abort`` and the status it set."""

    def __init__(self, request: web.Request) -> None:
        self._metadata = tuple((name.lower(), value) for name, value in request.headers.items())
        self._peer = request.remote or ""
        self._code: grpc.StatusCode | None = None

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata

    def peer(self) -> str:
        return self._peer

    def code(self) -> grpc.StatusCode | None:
        return self._code

    def set_code(self, code: grpc.StatusCode) -> None:
        self._code = code

    async def abort(self, code: grpc.StatusCode, details: str = "", trailing_metadata: Any = ()) -> None:
        self._code = code
        raise _Aborted(code, details, trailing_metadata)


@dataclass(frozen=True, slots=True)
class _CallDetails:
    """The ``grpc.HandlerCallDetails`` the interceptors read (the path; metadata is per call)."""

    method: str
    invocation_metadata: tuple[tuple[str, str], ...] = ()


class _Handlers:
    """Stands in for the gRPC server while a generated ``add_*Servicer_to_server`` registers a
    servicer's method handlers, and looks them up as the server would."""

    def __init__(self) -> None:
        self.generic: list[grpc.GenericRpcHandler] = []

    def add_generic_rpc_handlers(self, handlers: Iterable[grpc.GenericRpcHandler]) -> None:
        self.generic.extend(handlers)

    def add_registered_method_handlers(self, service: str, handlers: dict[str, Any]) -> None:
        """The generic handlers answer the same methods."""

    async def lookup(self, details: _CallDetails) -> grpc.RpcMethodHandler[Any, Any] | None:
        for handler in self.generic:
            found = handler.service(details)  # type: ignore[arg-type]
            if found is not None:
                return found
        return None


@dataclass(frozen=True, slots=True)
class _Method:
    path: str
    descriptor: MethodDescriptor
    request_type: type[Message]

    @property
    def unary(self) -> bool:
        return not (self.descriptor.client_streaming or self.descriptor.server_streaming)

    @property
    def no_side_effects(self) -> bool:
        options = self.descriptor.GetOptions()
        return bool(options.idempotency_level == MethodOptions.NO_SIDE_EFFECTS)


class ConnectFace:
    """The Connect routes of one gateway, over the servicers of ``app``."""

    def __init__(self, app: App) -> None:
        self.app = app
        self._handlers = _Handlers()
        self._interceptors = interceptors(app)
        self._chains: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
        self.methods: list[_Method] = []
        for entry in SERVICES:
            entry.add_to_server(entry.servicer(app), self._handlers)  # type: ignore[arg-type]
            for method in entry.descriptor.methods:
                request_type = message_factory.GetMessageClass(method.input_type)
                self.methods.append(_Method(f"/{entry.name}/{method.name}", method, request_type))

    def add_routes(self, router: web.UrlDispatcher) -> None:
        """One route per method (the access log names the method, never a credential), GET too for
        ``NO_SIDE_EFFECTS`` methods; then ``unimplemented`` for any other ``/package.Service/Method``."""
        for method in self.methods:
            router.add_post(method.path, self._handler(method, get=False))
            if method.unary and method.no_side_effects:
                router.add_get(method.path, self._handler(method, get=True), allow_head=False)
        router.add_post(f"/{{service:{_PACKAGE_PATH}}}/{{method}}", _unknown_method)

    def _handler(self, method: _Method, *, get: bool) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def handle(request: web.Request) -> web.Response:
            return await self._serve(request, method, get=get)

        # The gateway's body limit answers in this face's form (errors_middleware looks for it).
        setattr(handle, "too_large", _too_large)  # noqa: B010
        return handle

    async def _chain(self, path: str) -> grpc.RpcMethodHandler[Any, Any]:
        """``path``'s handler wrapped by the interceptors, as the gRPC server builds it."""
        chain = self._chains.get(path)
        if chain is None:
            details = _CallDetails(path)

            async def through(index: int, call_details: _CallDetails) -> Any:
                if index == len(self._interceptors):
                    return await self._handlers.lookup(call_details)
                return await self._interceptors[index].intercept_service(
                    functools.partial(through, index + 1),
                    call_details,  # type: ignore[arg-type]
                )

            chain = await through(0, details)
            if chain is None or chain.unary_unary is None:
                raise RuntimeError(f"{path}: no unary handler")
            self._chains[path] = chain
        return chain

    async def _serve(self, request: web.Request, method: _Method, *, get: bool) -> web.Response:
        if not method.unary:
            return error_response(
                grpc.StatusCode.UNIMPLEMENTED,
                f"{method.path[1:]} is a streaming method: call it over gRPC "
                "(the Connect protocol serves unary methods only)",
            )
        content_type, body = await (_query_message(request) if get else _body(request))
        if content_type is None:
            return _unsupported(request)
        version = request.headers.get("Connect-Protocol-Version") or request.query.get("connect")
        if version not in (None, "1", "v1"):
            return error_response(
                grpc.StatusCode.INVALID_ARGUMENT, f"Connect-Protocol-Version {version!r} is not supported (1)"
            )
        try:
            timeout = _timeout(request.headers.get("Connect-Timeout-Ms"))
        except OncallError as error:
            return oncall_error_response(error)
        context = _Context(request)
        message = _decode(method, content_type, body)
        try:
            chain = await self._chain(method.path)
            async with asyncio.timeout(timeout):
                response = await chain.unary_unary(message, context)  # type: ignore[arg-type, misc]
        except _Aborted as aborted:
            return _status_response(aborted)
        except TimeoutError:
            return error_response(
                grpc.StatusCode.DEADLINE_EXCEEDED, f"no answer within Connect-Timeout-Ms ({timeout:g} s)"
            )
        except Exception:
            log.exception("unexpected error in Connect handler %s", method.path)
            return error_response(grpc.StatusCode.INTERNAL, "internal error")
        if content_type == PROTO:
            return web.Response(body=response.SerializeToString(), content_type=PROTO)
        return web.json_response(json_format.MessageToDict(response, preserving_proto_field_name=False))


async def _body(request: web.Request) -> tuple[str | None, bytes | Undecodable]:
    """The encoding of a POST (None: not one this face reads) and its body."""
    if request.content_type not in (JSON, PROTO) or (request.charset or "utf-8").lower() != "utf-8":
        return None, b""
    from oncall_server.faces.http.gateway import read_body  # the gateway imports this module

    return request.content_type, await read_body(request)


async def _query_message(request: web.Request) -> tuple[str | None, bytes | Undecodable]:
    """A GET's encoding and message (``?encoding=json&message=...``, ``base64=1`` for URL-safe
    base64); ``compression`` other than identity is not read."""
    content_type = _ENCODINGS.get(request.query.get("encoding", ""))
    if content_type is None or request.query.get("compression", "identity") != "identity":
        return None, b""
    message = request.query.get("message", "")
    if request.query.get("base64") == "1":
        try:
            return content_type, base64.urlsafe_b64decode(message + "=" * (-len(message) % 4))
        except (binascii.Error, ValueError):
            return content_type, Undecodable(InvalidArgument.field("message", "is not URL-safe base64"))
    return content_type, message.encode()


def _decode(method: _Method, content_type: str, body: bytes | Undecodable) -> Message | Undecodable:
    """The request message, or what the chain refuses where it checks requests (as it does gRPC's
    bytes that are not a message): JSON the gateway's parser refuses
    (:func:`json_codec.loads_request`), or that is not the method's request in proto3 JSON."""
    if isinstance(body, Undecodable):
        return body
    message = method.request_type()
    if content_type == PROTO:
        try:
            message.ParseFromString(body)
        except DecodeError:
            return Undecodable.message(method.request_type.__name__)
        return message
    try:
        value = json_codec.loads_request(body, field="body") if body.strip() else {}
    except InvalidArgument as error:
        return Undecodable(error)
    if not isinstance(value, dict):
        return Undecodable(InvalidArgument.field("body", "must be a JSON object"))
    try:
        json_format.ParseDict(value, message, ignore_unknown_fields=False)
    except json_format.ParseError as error:
        return Undecodable(InvalidArgument.field("body", str(error)))
    return message


def _timeout(header: str | None) -> float | None:
    """``Connect-Timeout-Ms`` in seconds: at most 10 digits, as the specification allows."""
    if header is None:
        return None
    if not (header.isascii() and header.isdigit() and 0 < len(header) <= 10):
        raise InvalidArgument.field("Connect-Timeout-Ms", "must be a positive integer of at most 10 digits")
    return int(header) / 1000


def _unsupported(request: web.Request) -> web.Response:
    """415: not an encoding this face reads (Connect streaming's ``application/connect+json`` included)."""
    response = error_response(
        grpc.StatusCode.UNKNOWN,
        "the request must be application/json (proto3 JSON, UTF-8) or application/proto",
        http_status=415,
    )
    response.headers["Accept-Post"] = f"{JSON}, {PROTO}"
    return response


def _too_large(limit: int) -> web.Response:
    return oncall_error_response(
        PayloadTooLarge.field("body", f"is larger than the {limit}-byte limit (ONCALL_MAX_BODY_BYTES)")
    )


async def _unknown_method(request: web.Request) -> web.Response:
    """A ``/package.Service/Method`` path no method has: Connect's ``unimplemented``, with 404."""
    return error_response(
        grpc.StatusCode.UNIMPLEMENTED, "no method of this server has this path", http_status=404
    )


def add_routes(gateway: web.Application, app: App) -> None:
    """Serve every method of :data:`SERVICES` on ``gateway`` in the Connect protocol."""
    ConnectFace(app).add_routes(gateway.router)
