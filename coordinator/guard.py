"""A server interceptor around every Federation call: transfers take a slot (coordinator/transfers.py) and
are watched; every refused call is logged as one rate-limited line with the peer and the reason; a call that
fails unexpectedly is answered INTERNAL with one line, never UNKNOWN with a traceback per call."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from coordinator.transfers import TransferGate
from zk0.ratelog import RateLimitedLog

log = logging.getLogger(__name__)

# A refusal's details travel as trailing metadata, which gRPC caps (16 KiB): a reason that echoes a huge
# field would turn a precise refusal into "Stream removed" (RESOURCE_EXHAUSTED). Reasons are cut to this.
MAX_DETAILS = 1000
MAX_LOGGED = 300


def peer_host(peer: str) -> str:
    """'ipv4:127.0.0.1:54321' -> 'ipv4:127.0.0.1': every connection of one host shares a rate."""
    head, _, port = peer.rpartition(":")
    return head if head and port.isdigit() else peer


def claimed(request: Any) -> str:
    """The participant a unary request claims to be, for the log line ('' if none)."""
    for field in ("participant_id", "participant_name"):
        value = getattr(request, field, "")
        if value:
            return f" as {str(value)[:64]!r}"
    return ""


def shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else f"{text[: limit - 30]}... ({len(text)} characters)"


def one_line(text: str) -> str:
    """Control characters escaped: a reason that echoes a peer's field (a name with a newline) must not
    forge or split log lines."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class Malformed:
    """A request that did not parse: handed to the guard, which refuses it, instead of gRPC logging a
    traceback and answering INTERNAL."""

    def __init__(self, error: DecodeError) -> None:
        self.error = error


def tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None

    def deserialize(data: bytes) -> Any:
        try:
            return deserializer(data)
        except DecodeError as e:
            return Malformed(e)

    return deserialize


class CallGuard(grpc.ServerInterceptor):
    def __init__(self, transfers: TransferGate) -> None:
        self.transfers = transfers
        self.refusals = RateLimitedLog(log)
        self._failures_seen: set[tuple[str, str]] = set()

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        name = handler_call_details.method.rsplit("/", 1)[-1]
        if handler.request_streaming and not handler.response_streaming:
            return grpc.stream_unary_rpc_method_handler(
                self._upload(name, handler.stream_unary),
                request_deserializer=tolerant(handler.request_deserializer),
                response_serializer=handler.response_serializer,
            )
        if not handler.request_streaming and handler.response_streaming:
            return grpc.unary_stream_rpc_method_handler(
                self._download(name, handler.unary_stream),
                request_deserializer=tolerant(handler.request_deserializer),
                response_serializer=handler.response_serializer,
            )
        if not handler.request_streaming and not handler.response_streaming:
            return grpc.unary_unary_rpc_method_handler(
                self._unary(name, handler.unary_unary),
                request_deserializer=tolerant(handler.request_deserializer),
                response_serializer=handler.response_serializer,
            )
        return handler

    # ------------------------------------------------------------------ the three shapes of call

    def _unary(self, name: str, behavior: Callable) -> Callable:
        def guarded(request, context):
            self._parsed(name, request, context)
            try:
                return behavior(request, context)
            except Exception as e:
                self._failed(name, claimed(request), context, e)
                raise

        return guarded

    def _upload(self, name: str, behavior: Callable) -> Callable:
        def guarded(requests: Iterator, context):
            transfer = self._admit("upload", name, context)
            context.add_callback(lambda: self.transfers.release(transfer))
            try:
                parsed = (self._parsed(name, r, context) for r in requests)
                response = behavior(self.transfers.watch_requests(transfer, parsed), context)
            except Exception as e:
                self._failed(name, "", context, e)
                raise
            finally:
                self.transfers.release(transfer)
            if response is not None and not response.accepted:
                self._refused(name, "", context, f"{response.reason} (answered: not accepted)")
            return response

        return guarded

    def _download(self, name: str, behavior: Callable) -> Callable:
        def guarded(request, context):
            self._parsed(name, request, context)
            transfer = self._admit("download", name, context)
            context.add_callback(lambda: self.transfers.release(transfer))
            try:
                for message in behavior(request, context):
                    yield message
                    self.transfers.progress(transfer)  # gRPC asks for the next one once this one is sent
            except Exception as e:
                self._failed(name, claimed(request), context, e)
                raise
            finally:
                self.transfers.release(transfer)

        return guarded

    # ------------------------------------------------------------------ admission and logging

    def _admit(self, kind: str, name: str, context: grpc.ServicerContext):
        transfer = self.transfers.admit(kind, context)
        if transfer is None:
            busy = self.transfers.max_transfers
            reason = f"coordinator busy: {busy} transfers in progress; retry"
            self._refused(name, "", context, f"RESOURCE_EXHAUSTED: {reason}")
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, reason)
        return transfer

    def _parsed(self, name: str, request: Any, context: grpc.ServicerContext) -> Any:
        """The request, unless it did not parse: then the call is refused INVALID_ARGUMENT."""
        if isinstance(request, Malformed):
            reason = f"malformed request: {request.error}"
            self._refused(name, "", context, f"INVALID_ARGUMENT: {reason}")
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, reason)
        return request

    def _refused(self, name: str, claim: str, context: grpc.ServicerContext, reason: str) -> None:
        peer = context.peer()
        self.refusals.log(
            logging.WARNING, peer_host(peer), "refused %s from %s%s: %s", name, peer, claim, one_line(reason)
        )

    def _failed(self, name: str, claim: str, context: grpc.ServicerContext, error: Exception) -> None:
        """After the handler raised: an abort is a refusal (logged); a cancelled call needs nothing; any
        other exception is a bug, answered INTERNAL (its traceback logged once per method and type)."""
        code = context.code()
        if code is not None and code != grpc.StatusCode.OK:
            details = context.details()
            text = details.decode(errors="replace") if isinstance(details, bytes) else str(details or "")
            if len(text) > MAX_DETAILS:
                context.set_details(shorten(text, MAX_DETAILS))
            self._refused(name, claim, context, f"{code.name}: {shorten(text, MAX_LOGGED)}")
            return
        if isinstance(error, grpc.RpcError) or not context.is_active():
            return  # the call was cancelled (client gone, watchdog, shutdown): gRPC has already ended it
        key = (name, type(error).__name__)
        first = key not in self._failures_seen
        self._failures_seen.add(key)
        log.error(
            "%s from %s failed: %s: %s", name, context.peer(), type(error).__name__, error, exc_info=first
        )
        context.abort(grpc.StatusCode.INTERNAL, f"coordinator error in {name}: {type(error).__name__}")
