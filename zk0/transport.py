"""What both ends of the gRPC link must agree on: message bounds, the token metadata, TLS credentials."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import grpc

from zk0.errors import Zk0Error

TOKEN_METADATA_KEY = "authorization"
TOKEN_PREFIX = "Bearer "
# A chunk is at most 4 MiB; the bound leaves room for the message framing around it.
MAX_MESSAGE_BYTES = 8 * 1024 * 1024
GRPC_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
]


def token_metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    return ((TOKEN_METADATA_KEY, TOKEN_PREFIX + token),) if token else ()


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def read_file(path: Path | None, what: str) -> bytes | None:
    if path is None:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise Zk0Error(f"cannot read {what} {path}: {e.strerror}") from e


def server_credentials(cert: Path, key: Path, client_ca: Path | None) -> grpc.ServerCredentials:
    """TLS for the coordinator; with `client_ca`, participants must also present a certificate it signed."""
    pair = (read_file(key, "TLS key"), read_file(cert, "TLS certificate"))
    ca = read_file(client_ca, "client CA")
    return grpc.ssl_server_credentials([pair], root_certificates=ca, require_client_auth=ca is not None)


def channel_credentials(ca: Path | None, cert: Path | None, key: Path | None) -> grpc.ChannelCredentials:
    """TLS for a participant: `ca` verifies the coordinator (None: system roots); cert/key: mutual TLS."""
    if (cert is None) != (key is None):
        raise Zk0Error("--tls-cert and --tls-key go together (mutual TLS needs both)")
    return grpc.ssl_channel_credentials(
        root_certificates=read_file(ca, "TLS CA"),
        private_key=read_file(key, "TLS key"),
        certificate_chain=read_file(cert, "TLS certificate"),
    )
