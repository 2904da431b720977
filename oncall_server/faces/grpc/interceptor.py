"""Maps domain errors to gRPC statuses in one place, and checks requests before servicers run.

``INVALID_ARGUMENT`` carries ``google.rpc.BadRequest`` details naming the
field; an outage of the database or Redis (:mod:`oncall_server.failures`) is
``UNAVAILABLE`` with ``google.rpc.RetryInfo``, whichever path met it; anything
unexpected becomes ``INTERNAL`` with no internals exposed (the traceback goes
to the log, with the method name: never metadata, which carries credentials).

Every request message is checked by :func:`request_checks.check_request` first (enum
values, time ranges, JSON depth), and bytes that are not a valid message are
``INVALID_ARGUMENT`` rather than grpcio's ``INTERNAL``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf import any_pb2
from google.protobuf.message import DecodeError
from google.rpc import code_pb2, error_details_pb2, status_pb2  # type: ignore[import-untyped]
from grpc_status import rpc_status
from prometheus_client import Histogram

from oncall_server import failures
from oncall_server.errors import InvalidArgument, OncallError, ResourceExhausted, Unavailable
from oncall_server.faces.grpc import request_checks

log = logging.getLogger(__name__)
ONCALL_PATH_PREFIX = "/oncall."
"""The call paths this interceptor maps and checks; any other service (``grpc.health.v1``,
``grpc.reflection``) is handed on untouched."""
UNAVAILABLE_RETRY_SECONDS = 5.0
"""``RetryInfo`` of an ``UNAVAILABLE``: the database or Redis is unreachable, a quick retry would fail too."""
RPC_SECONDS = Histogram(
    "oncall_grpc_request_duration_seconds",
    "gRPC calls of implemented methods, from the handler's start to its last message or its status, "
    "by full method name and status code.",
    ["method", "code"],
)


def _observe(method: str, context: grpc.aio.ServicerContext[Any, Any], started: float, ended: str) -> None:
    """``ended``: the code when no status was set (``OK`` returned, ``CANCELLED`` by the client)."""
    code_of = getattr(context, "code", None)  # absent from test doubles of the context
    code = code_of() if code_of is not None else None  # set by an abort (ours or a servicer's), set_code
    if code is None:
        name = ended
    elif isinstance(code, grpc.StatusCode):
        name = code.name
    else:  # an int, as some grpc.aio versions keep it
        name = next((c.name for c in grpc.StatusCode if c.value[0] == code), str(code))
    RPC_SECONDS.labels(method, name).observe(time.perf_counter() - started)


def _retry_info(seconds: float) -> any_pb2.Any:
    retry = error_details_pb2.RetryInfo()
    retry.retry_delay.FromMilliseconds(int(seconds * 1000))
    packed = any_pb2.Any()
    packed.Pack(retry)
    return packed


def to_status(error: OncallError) -> grpc.Status:
    details: list[any_pb2.Any] = []
    if isinstance(error, InvalidArgument) and error.violations:
        bad = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
                for v in error.violations
            ]
        )
        packed = any_pb2.Any()
        packed.Pack(bad)
        details.append(packed)
    if isinstance(error, ResourceExhausted):
        details.append(_retry_info(error.retry_after_seconds))
    elif isinstance(error, Unavailable):
        details.append(_retry_info(UNAVAILABLE_RETRY_SECONDS))
    code = getattr(code_pb2, error.grpc_code.name)
    status: grpc.Status = rpc_status.to_status(
        status_pb2.Status(code=code, message=error.message, details=details)
    )
    return status


async def _abort(context: grpc.aio.ServicerContext[Any, Any], exc: BaseException, method: str) -> None:
    error = exc if isinstance(exc, OncallError) else failures.as_unavailable(exc)
    if error is not None:
        if not isinstance(exc, OncallError):
            log.warning("%s: the database or Redis is unavailable (%s)", method, type(exc).__name__)
        status = to_status(error)
        await context.abort(status.code, status.details, status.trailing_metadata)
    log.exception("unexpected error in gRPC handler %s", method, exc_info=exc)
    await context.abort(grpc.StatusCode.INTERNAL, "internal error")


class Undecodable:
    """What a face hands on for a request it could not decode (the deserializer: bytes that are not
    a valid message; the Connect face: JSON that is not the request message): the handler chain
    raises :attr:`error` where it checks requests, so both faces refuse it at the same point."""

    def __init__(self, error: InvalidArgument) -> None:
        self.error = error

    @classmethod
    def message(cls, message_name: str) -> Undecodable:
        """Bytes that are not a valid ``message_name`` message."""
        return cls(InvalidArgument.field("request", f"is not a valid {message_name} message"))


def _deserializer(deserialize: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserialize is None:
        return None
    owner = getattr(deserialize, "__self__", None)  # Message.FromString is bound to its class
    name = getattr(owner, "__name__", "request")

    def parse(data: bytes) -> Any:
        try:
            return deserialize(data)
        except DecodeError:
            return Undecodable.message(name)

    return parse


def _checked(request: Any, path: str = "") -> Any:
    if isinstance(request, Undecodable):
        raise request.error
    if hasattr(request, "DESCRIPTOR"):
        request_checks.check_request(request, path)
    return request


async def _checked_stream(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    index = 0
    async for request in requests:
        yield _checked(request, f"requests[{index}]")
        index += 1


def _wrap_unary(
    behavior: Callable[..., Awaitable[Any]], method: str, *, streaming_request: bool = False
) -> Callable[..., Awaitable[Any]]:
    async def call(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        started, ended = time.perf_counter(), "UNKNOWN"
        try:
            checked = _checked_stream(request) if streaming_request else _checked(request)
            response = await behavior(checked, context)
            ended = "OK"
            return response
        except grpc.aio.AbortError:
            raise
        except asyncio.CancelledError:
            ended = "CANCELLED"
            raise
        except Exception as exc:
            await _abort(context, exc, method)
        finally:
            _observe(method, context, started, ended)

    return call


def _wrap_stream(
    behavior: Callable[..., AsyncIterator[Any]], method: str
) -> Callable[..., AsyncIterator[Any]]:
    async def call(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
        started, ended = time.perf_counter(), "UNKNOWN"
        try:
            async for item in behavior(_checked(request), context):
                yield item
            ended = "OK"
        except grpc.aio.AbortError:
            raise
        except asyncio.CancelledError:
            ended = "CANCELLED"
            raise
        except Exception as exc:
            await _abort(context, exc, method)
        finally:
            _observe(method, context, started, ended)

    return call


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        method = str(handler_call_details.method)
        if handler is None or not method.startswith(ONCALL_PATH_PREFIX):
            # gRPC's own services (health, reflection) keep their handlers as written: Health/Watch
            # is a coroutine writing with ``context.write``, which the stream wrapper cannot iterate.
            return handler
        serial = {
            "request_deserializer": _deserializer(handler.request_deserializer),
            "response_serializer": handler.response_serializer,
        }
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(_wrap_unary(handler.unary_unary, method), **serial)
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                _wrap_unary(handler.stream_unary, method, streaming_request=True), **serial
            )
        if handler.unary_stream:
            streaming: Any = handler.unary_stream  # an async generator under grpc.aio, whatever the stubs say
            return grpc.unary_stream_rpc_method_handler(_wrap_stream(streaming, method), **serial)
        return handler
