"""What went wrong reaching the coordinator, in words, and whether waiting can fix it.

gRPC reports every connection failure as UNAVAILABLE; its details say which. A certificate the CA does not
vouch for, TLS spoken to a plaintext port (or the reverse), a missing client certificate for mutual TLS, a
name that does not resolve and an address without a port never heal by retrying, so they end the
participant at once with what failed and where. A refused or reset connection (the coordinator is down or
restarting) is worth waiting for.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc

from zk0.errors import Zk0Error

_FORM = "HOST:PORT, e.g. coordinator.lan:50051"


def parse_address(address: str) -> tuple[str, int]:
    """HOST:PORT (or [IPv6]:PORT) -> (host, port); a missing or bad port is an operator mistake."""
    host, sep, port = address.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:  # an unbracketed IPv6 address: its last group is not a port
        sep = ""
    if sep and not host:
        raise Zk0Error(f"coordinator address {address!r} has no host: {_FORM}")
    if not sep or not port:
        raise Zk0Error(f"coordinator address {address!r} needs a port: {_FORM}")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise Zk0Error(f"coordinator address {address!r}: port {port!r} is not a number from 1 to 65535")
    return host, int(port)


@dataclass(frozen=True)
class Failure:
    cause: str
    retry: bool


# (substring of the error's details, what it means, whether waiting can fix it); first match wins.
_PATTERNS = (
    ("CERTIFICATE_VERIFY_FAILED", "TLS certificate verification failed (check --tls-ca)", False),
    ("is not in peer certificate", "the coordinator's certificate does not name this host", False),
    ("WRONG_VERSION_NUMBER", "TLS handshake failed: the coordinator speaks plaintext (--insecure?)", False),
    ("Domain name not found", "DNS lookup failed: no such host", False),
    ("errors resolving", "DNS lookup failed", True),
    ("Connection refused", "connection refused", True),
)
_CLOSED = "Socket closed"


def diagnose(error: grpc.RpcError, *, insecure: bool, ever_connected: bool) -> Failure:
    """Classify an UNAVAILABLE error by its details (gRPC has no finer status for connection failures)."""
    details = error.details() or ""
    for needle, cause, retry in _PATTERNS:
        if needle in details:
            return Failure(cause, retry)
    if "Tls handshake failed" in details:  # other than the above: fatal unless it worked before
        reason = details.rsplit("Tls handshake failed", 1)[1].strip(" :")
        return Failure(f"TLS handshake failed: {reason}", ever_connected)
    if not ever_connected and "failed to connect" in details and _CLOSED in details:
        # Closed during the handshake by a coordinator never reached before: a TLS port closes a plaintext
        # handshake, a mutual-TLS one a handshake without a certificate it trusts. (A coordinator reached
        # before that does this is restarting: retried.)
        if insecure:
            return Failure(
                "the coordinator closed the connection: it serves TLS, and --insecure is plaintext", False
            )
        return Failure(
            "the coordinator closed the TLS connection: it requires a client certificate signed by its CA "
            "(--tls-cert/--tls-key)",
            False,
        )
    return Failure(f"unavailable: {details}" if details else "unavailable", True)
