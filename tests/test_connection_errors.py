"""A participant that cannot reach the coordinator says what failed and where, and retries only what waiting
can fix. Real gRPC servers on loopback (TLS and plaintext), a throwaway PKI, a real participant process."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from test_federation_security import make_ca, make_cert

from participant.client import ClientOptions, ParticipantClient
from participant.connection import parse_address
from zk0.errors import Zk0Error
from zk0.v1 import federation_pb2_grpc as pb_grpc

BIN = Path(sys.executable).parent
ROOT = Path(__file__).parent.parent


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("pki")
    make_ca(d, "ca")
    make_ca(d, "other-ca")
    make_cert(d, "server", "ca", "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n")
    return d


@pytest.fixture(scope="module")
def servers(pki):
    """TLS, mutual-TLS and plaintext gRPC servers of the Federation service (unimplemented: never reached)."""
    started = {}
    pair = ((pki / "server.key").read_bytes(), (pki / "server.pem").read_bytes())
    for kind in ("tls", "mtls", "plain"):
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        pb_grpc.add_FederationServicer_to_server(pb_grpc.FederationServicer(), server)
        if kind == "tls":
            port = server.add_secure_port("127.0.0.1:0", grpc.ssl_server_credentials([pair]))
        elif kind == "mtls":
            ca = (pki / "ca.pem").read_bytes()
            creds = grpc.ssl_server_credentials([pair], root_certificates=ca, require_client_auth=True)
            port = server.add_secure_port("127.0.0.1:0", creds)
        else:
            port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        started[kind] = (server, port)
    yield {kind: port for kind, (_, port) in started.items()}
    for server, _ in started.values():
        server.stop(grace=None)


def join_error(**options) -> str:
    """Join with the default 600 s give-up time and return the error; a retrying client fails the bounded
    wait (the join thread is a daemon, its channel closed at the end)."""
    client = ParticipantClient(ClientOptions(dataset="demo:p0", name="p0", progress=False, **options))
    errors: list[BaseException] = []

    def join() -> None:
        try:
            client.join()
        except Zk0Error as e:
            errors.append(e)

    thread = threading.Thread(target=join, daemon=True)
    thread.start()
    thread.join(timeout=60)
    client.stopped.set()
    client.channel.close()
    assert not thread.is_alive(), "the participant kept retrying a failure that waiting cannot fix"
    assert errors, "joined a server it should not have"
    return str(errors[0])


def test_wrong_ca_is_a_certificate_failure_at_once(servers, pki):
    message = join_error(coordinator=f"127.0.0.1:{servers['tls']}", tls_ca=pki / "other-ca.pem")
    assert message == (
        f"cannot reach coordinator 127.0.0.1:{servers['tls']}: TLS certificate verification failed "
        "(check --tls-ca)"
    )


def test_tls_to_a_plaintext_server_says_so_at_once(servers, pki):
    message = join_error(coordinator=f"127.0.0.1:{servers['plain']}", tls_ca=pki / "ca.pem")
    assert f"127.0.0.1:{servers['plain']}" in message
    assert "the coordinator speaks plaintext" in message


def test_plaintext_to_a_tls_server_says_so_at_once(servers):
    message = join_error(coordinator=f"127.0.0.1:{servers['tls']}", insecure=True)
    assert f"127.0.0.1:{servers['tls']}" in message
    assert "it serves TLS, and --insecure is plaintext" in message


def test_mutual_tls_without_a_client_certificate_says_so_at_once(servers, pki):
    message = join_error(coordinator=f"127.0.0.1:{servers['mtls']}", tls_ca=pki / "ca.pem")
    assert f"127.0.0.1:{servers['mtls']}" in message
    assert "requires a client certificate signed by its CA (--tls-cert/--tls-key)" in message


def test_unresolvable_host_is_a_dns_failure_at_once(pki):
    message = join_error(coordinator="no-such-host.invalid:50051", tls_ca=pki / "ca.pem")
    assert message.startswith("cannot reach coordinator no-such-host.invalid:50051: DNS lookup failed")


def test_refused_connection_is_retried_with_its_cause_and_the_give_up_time(caplog):
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    caplog.set_level(logging.WARNING, logger="participant.client")
    options = ClientOptions(
        coordinator=f"127.0.0.1:{port}", dataset="demo:p0", name="p0", insecure=True, give_up_s=1.0
    )
    client = ParticipantClient(options)
    try:
        with pytest.raises(Zk0Error, match=r"unreachable \(connection refused\) for \d+s \(join\)"):
            client.join()
    finally:
        client.channel.close()
    retries = [r.getMessage() for r in caplog.records]
    assert retries[0] == (
        f"join: coordinator 127.0.0.1:{port} unreachable (connection refused); retrying in 0.5s, "
        "giving up after 1s (--give-up-after)"
    )
    assert all("giving up" not in line for line in retries[1:])


@pytest.mark.parametrize(
    ("address", "message"),
    [
        ("127.0.0.1", "needs a port"),
        ("coordinator.lan:", "needs a port"),
        ("::1", "needs a port"),
        (":50051", "has no host"),
        ("coordinator.lan:http", "port 'http' is not a number"),
        ("coordinator.lan:70000", "port '70000' is not a number"),
    ],
)
def test_bad_addresses_are_refused_before_connecting(address, message):
    with pytest.raises(Zk0Error, match=message):
        parse_address(address)


def test_addresses_with_a_port_parse():
    assert parse_address("coordinator.lan:50051") == ("coordinator.lan", 50051)
    assert parse_address("[::1]:50051") == ("::1", 50051)


@pytest.mark.slow
def test_participant_without_a_port_is_one_line_and_exit_2():
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [str(BIN / "zk0-participant"), "--coordinator", "127.0.0.1", "--dataset", "demo:p0", "--insecure"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "zk0-participant: error: coordinator address '127.0.0.1' needs a port: HOST:PORT, e.g. "
        "coordinator.lan:50051"
    ]


def test_give_up_default_is_in_the_help():
    from participant.cli import build_parser

    assert "(default: 600)" in " ".join(build_parser().format_help().split())
