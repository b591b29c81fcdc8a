"""The server interceptor in front of every TabletManager call: requests that do not decode get
INVALID_ARGUMENT (not INTERNAL), and the caller must be authorized before the handler runs.
Health and reflection stay open."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from agent.daemon.auth import Authorizer
from agent.errors import InvalidArgument, PermissionDenied

SERVICE_PREFIX = "/tabletmanagerservice.TabletManager/"
Context = grpc.aio.ServicerContext[Any, Any]
Handler = Callable[[Any, Context], Any]


@dataclass(frozen=True)
class Malformed:
    """Stands in for a request whose bytes did not decode."""

    reason: str


def _tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None

    def decode(data: bytes) -> Any:
        try:
            return deserializer(data)
        except (DecodeError, UnicodeDecodeError, ValueError) as e:
            return Malformed(str(e) or type(e).__name__)

    return decode


class RequestGuard(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    def __init__(self, authorizer: Authorizer) -> None:
        self._authorizer = authorizer

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(handler_call_details)
        path = handler_call_details.method
        if handler is None or not path.startswith(SERVICE_PREFIX):
            return handler
        method = path.removeprefix(SERVICE_PREFIX)
        authorizer = self._authorizer

        async def check(request: Any, context: Context) -> None:
            metadata = [(k, v) for k, v in context.invocation_metadata() or ()]
            auth = {k: list(v) for k, v in context.auth_context().items()}
            caller = authorizer.identify(metadata, auth, context.peer())
            try:
                authorizer.authorize(method, caller)
            except PermissionDenied as e:
                await context.abort(e.code, str(e))
            if isinstance(request, Malformed):
                err = InvalidArgument(f"malformed {method} request: {request.reason}")
                await context.abort(err.code, str(err))

        decode = _tolerant(handler.request_deserializer)
        if handler.unary_unary is not None:
            inner_unary: Handler = handler.unary_unary  # type: ignore[assignment]  # aio handlers are async

            async def unary(request: Any, context: Context) -> Any:
                await check(request, context)
                return await inner_unary(request, context)

            return grpc.unary_unary_rpc_method_handler(unary, decode, handler.response_serializer)
        if handler.unary_stream is not None:
            inner_stream: Handler = handler.unary_stream  # type: ignore[assignment]

            async def stream(request: Any, context: Context) -> AsyncIterator[Any]:
                await check(request, context)
                async for item in inner_stream(request, context):
                    yield item

            return grpc.unary_stream_rpc_method_handler(stream, decode, handler.response_serializer)
        return handler
