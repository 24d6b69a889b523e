"""Credentials on the wire: TLS, mutual TLS and per-participant tokens, through real gRPC on loopback.

A throwaway PKI is made with the openssl CLI: a CA, a server certificate for 127.0.0.1/localhost signed by it,
a client certificate signed by it (mutual TLS), and an unrelated CA with its own client certificate.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import subprocess
import threading
from pathlib import Path

import grpc
import pytest
from conftest import small_config

from coordinator.server import CoordinatorServer, ServerOptions
from coordinator.service import read_tokens
from participant.client import ClientOptions, ParticipantClient
from zk0.errors import Zk0Error
from zk0.transport import GRPC_OPTIONS, TOKEN_METADATA_KEY, token_metadata
from zk0.v1 import federation_pb2 as pb
from zk0.v1 import federation_pb2_grpc as pb_grpc

OPENSSL = "/usr/bin/openssl"
TOKENS = {"alice": secrets.token_hex(16), "bob": secrets.token_hex(16)}
PARTICIPANTS = {"alice": "demo:p0", "bob": "demo:p1"}


# ---------------------------------------------------------------------------------------- a throwaway PKI


def openssl(*args: str, cwd: Path) -> None:
    result = subprocess.run([OPENSSL, *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"openssl {' '.join(args)}: {result.stderr}"


def make_ca(directory: Path, name: str) -> None:
    openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "2", "-subj", f"/CN=zk0 test {name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=directory,
    )  # fmt: skip


def make_cert(directory: Path, name: str, ca: str, extensions: str) -> None:
    """A key and a certificate signed by `ca`, with the given X.509 v3 extensions."""
    (directory / f"{name}.ext").write_text(extensions)
    openssl(
        "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}",
        cwd=directory,
    )  # fmt: skip
    openssl(
        "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
        "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext",
        cwd=directory,
    )  # fmt: skip


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("pki")
    make_ca(d, "ca")
    make_ca(d, "other-ca")
    make_cert(d, "server", "ca", "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n")
    make_cert(d, "alice", "ca", "extendedKeyUsage=clientAuth\n")
    make_cert(d, "stranger", "other-ca", "extendedKeyUsage=clientAuth\n")
    return d


@pytest.fixture
def tokens_file(tmp_path) -> Path:
    path = tmp_path / "tokens"
    path.write_text("# participant token\n" + "".join(f"{n} {t}\n" for n, t in TOKENS.items()))
    return path


@pytest.fixture
def start_server(demo_root, tmp_path):
    """Start a CoordinatorServer (TLS by default); stopped at teardown unless the test waited for it."""
    servers: list[CoordinatorServer] = []

    def start(*overrides: str, **options) -> tuple[CoordinatorServer, int]:
        config = small_config(demo_root, *overrides)
        server = CoordinatorServer(
            config, tmp_path / f"run{len(servers)}", ServerOptions(host="127.0.0.1", device="cpu", **options)
        )
        port = server.start()
        servers.append(server)
        return server, port

    yield start
    for server in servers:
        if server.driver.is_alive():
            server.stop()


def tls_channel(port: int, ca: Path, cert: Path | None = None, key: Path | None = None) -> grpc.Channel:
    creds = grpc.ssl_channel_credentials(
        root_certificates=ca.read_bytes(),
        private_key=key.read_bytes() if key else None,
        certificate_chain=cert.read_bytes() if cert else None,
    )
    return grpc.secure_channel(f"127.0.0.1:{port}", creds, options=GRPC_OPTIONS)


def join(stub: pb_grpc.FederationStub, name: str, metadata=()) -> pb.JoinResponse:
    request = pb.JoinRequest(participant_name=name, dataset=pb.DatasetDescription(repo_id="probe"))
    return stub.Join(request, metadata=metadata, timeout=10)


def refused_code(call, *args) -> grpc.StatusCode:
    """The status code of the RpcError that `call(*args)` must raise."""
    with pytest.raises(grpc.RpcError) as refused:
        call(*args)
    return refused.value.code()


def run_participants(server: CoordinatorServer, options: dict[str, ClientOptions]) -> dict[str, int]:
    """Real ParticipantClients in threads (one training at a time, as `zk0 simulate` does) until the run
    is over; returns the rounds each trained."""
    lock = threading.Lock()
    rounds: dict[str, int] = {}
    errors: list[BaseException] = []

    def take_part(name: str) -> None:
        try:
            rounds[name] = ParticipantClient(options[name], train_lock=lock).run()
        except BaseException as e:  # noqa: BLE001 - reported by the test
            errors.append(e)

    threads = [threading.Thread(target=take_part, args=(n,), daemon=True) for n in options]
    for thread in threads:
        thread.start()
    try:
        server.wait(timeout=120)
    finally:
        for thread in threads:
            thread.join(timeout=30)
    assert not errors, errors
    return rounds


def check_completed(server: CoordinatorServer, names: list[str]) -> None:
    lines = [json.loads(line) for line in server.store.run.metrics_path.read_text().splitlines()]
    assert [entry["round"] for entry in lines] == [0, 1]
    assert lines[1]["participants"]["accepted"] == sorted(names)
    assert lines[1]["participants"]["refused"] == []
    assert (server.store.run.final_dir / "config.json").exists()
    assert server.coordinator.done


# ---------------------------------------------------------------------------------------- refusals


def test_calls_without_valid_credentials_are_refused_and_logged(start_server, pki, tokens_file, caplog):
    caplog.set_level(logging.INFO, logger="coordinator.guard")
    server, port = start_server(
        "federation.min_participants=2",
        tls_cert=pki / "server.pem",
        tls_key=pki / "server.key",
        tokens=tokens_file,
    )
    channel = tls_channel(port, pki / "ca.pem")
    stub = pb_grpc.FederationStub(channel)
    unknown = secrets.token_hex(16)
    try:
        # No token, a malformed one, an unknown one: unauthenticated. Another participant's: denied.
        assert refused_code(join, stub, "alice") == grpc.StatusCode.UNAUTHENTICATED
        malformed = ((TOKEN_METADATA_KEY, TOKENS["alice"]),)  # without "Bearer "
        assert refused_code(join, stub, "alice", malformed) == grpc.StatusCode.UNAUTHENTICATED
        assert refused_code(join, stub, "alice", token_metadata(unknown)) == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as denied:
            join(stub, "alice", token_metadata(TOKENS["bob"]))
        assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "bob" in denied.value.details()
        assert not server.coordinator.is_registered("alice")

        # Every other call is guarded the same way, streaming ones included.
        name = "bob"
        calls = {
            "Heartbeat": lambda md: stub.Heartbeat(
                pb.HeartbeatRequest(participant_id=name), metadata=md, timeout=10
            ),
            "GetTask": lambda md: stub.GetTask(
                pb.GetTaskRequest(participant_id=name), metadata=md, timeout=10
            ),
            "DownloadModel": lambda md: list(
                stub.DownloadModel(
                    pb.DownloadModelRequest(participant_id=name, version=server.coordinator.global_version),
                    metadata=md,
                    timeout=10,
                )
            ),
            "UploadUpdate": lambda md: stub.UploadUpdate(
                iter([pb.UploadUpdateRequest(header=pb.UpdateHeader(participant_id=name, round=1))]),
                metadata=md,
                timeout=10,
            ),
            "ReportEvaluation": lambda md: stub.ReportEvaluation(
                pb.ReportEvaluationRequest(participant_id=name, round=1), metadata=md, timeout=10
            ),
        }
        for what, call in calls.items():
            assert refused_code(call, ()) == grpc.StatusCode.UNAUTHENTICATED, what
            assert refused_code(call, token_metadata(unknown)) == grpc.StatusCode.UNAUTHENTICATED, what
            assert refused_code(call, token_metadata(TOKENS["alice"])) == grpc.StatusCode.PERMISSION_DENIED, (
                what
            )

        # The control: the same channel with the right token gets in.
        reply = join(stub, "alice", token_metadata(TOKENS["alice"]))
        assert reply.session_id and reply.run_id
        assert server.coordinator.is_registered("alice")
        assert not server.coordinator.is_registered("bob")
    finally:
        channel.close()

    # One line per refused call, at most a few a second per peer host: the rest are counted, never lost.
    logged = [r.getMessage() for r in caplog.records if r.name == "coordinator.guard"]
    lines = [m for m in logged if m.startswith("refused ")]
    suppressed = sum(int(n) for m in logged for n in re.findall(r"\((\d+) more from", m))
    pending = sum(server.guard.refusals.limiter.pending().values())
    assert len(lines) + suppressed + pending == 4 + 3 * len(calls), logged
    assert lines[0].endswith("as 'alice': UNAUTHENTICATED: no token: pass --token"), lines[0]
    for message in logged:  # a refusal names the peer and the claim, never a secret
        assert "ipv4:127.0.0.1:" in message, message
        assert not any(token in message for token in [*TOKENS.values(), unknown]), message


def test_tls_clients_without_the_right_ca_are_refused(start_server, pki, tokens_file):
    server, port = start_server(tls_cert=pki / "server.pem", tls_key=pki / "server.key", tokens=tokens_file)
    alice = token_metadata(TOKENS["alice"])
    for channel in (
        tls_channel(port, pki / "other-ca.pem"),  # does not trust the coordinator's certificate
        grpc.insecure_channel(f"127.0.0.1:{port}"),  # plaintext to a TLS port
    ):
        try:
            code = refused_code(join, pb_grpc.FederationStub(channel), "alice", alice)
        finally:
            channel.close()
        assert code == grpc.StatusCode.UNAVAILABLE
    assert not server.coordinator.is_registered("alice")

    # The participant stops at once with what failed instead of trusting what it cannot verify.
    options = ClientOptions(
        coordinator=f"127.0.0.1:{port}",
        dataset="demo:p0",
        name="alice",
        token=TOKENS["alice"],
        tls_ca=pki / "other-ca.pem",
        give_up_s=1.0,
        progress=False,
    )
    client = ParticipantClient(options)
    try:
        with pytest.raises(Zk0Error, match="TLS certificate verification failed"):
            client.join()
    finally:
        client.channel.close()
    assert not server.coordinator.is_registered("alice")


# ---------------------------------------------------------------------------------------- happy paths


@pytest.mark.slow
def test_a_run_over_tls_with_tokens(start_server, pki, tokens_file):
    server, port = start_server(
        "federation.min_participants=2",
        "federation.min_updates=2",
        tls_cert=pki / "server.pem",
        tls_key=pki / "server.key",
        tokens=tokens_file,
    )
    options = {
        name: ClientOptions(
            coordinator=f"127.0.0.1:{port}",
            dataset=spec,
            name=name,
            token=TOKENS[name],
            tls_ca=pki / "ca.pem",
            device="cpu",
            progress=False,
            give_up_s=30.0,
        )
        for name, spec in PARTICIPANTS.items()
    }
    assert run_participants(server, options) == {"alice": 1, "bob": 1}
    check_completed(server, list(PARTICIPANTS))


@pytest.mark.slow
def test_mutual_tls_needs_a_client_certificate_from_the_ca(start_server, pki):
    server, port = start_server(
        "federation.min_participants=1",
        "federation.min_updates=1",
        tls_cert=pki / "server.pem",
        tls_key=pki / "server.key",
        tls_client_ca=pki / "ca.pem",
    )
    for cert, key in ((None, None), (pki / "stranger.pem", pki / "stranger.key")):
        channel = tls_channel(port, pki / "ca.pem", cert, key)
        try:
            code = refused_code(join, pb_grpc.FederationStub(channel), "alice")
        finally:
            channel.close()
        assert code == grpc.StatusCode.UNAVAILABLE, cert
    base = dict(coordinator=f"127.0.0.1:{port}", dataset="demo:p0", name="alice", tls_ca=pki / "ca.pem")
    client = ParticipantClient(ClientOptions(**base, give_up_s=1.0, progress=False))
    try:
        with pytest.raises(Zk0Error, match="requires a client certificate signed by its CA"):
            client.join()
    finally:
        client.channel.close()
    assert not server.coordinator.is_registered("alice")

    options = ClientOptions(
        **base,
        tls_cert=pki / "alice.pem",
        tls_key=pki / "alice.key",
        device="cpu",
        progress=False,
        give_up_s=30.0,
    )
    assert run_participants(server, {"alice": options}) == {"alice": 1}
    check_completed(server, ["alice"])


# ---------------------------------------------------------------------------------------- option checks


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (dict(host="0.0.0.0", insecure=True), "--insecure serves only on a loopback host, not 0.0.0.0"),
        (dict(host="192.168.1.10", insecure=True), "--insecure serves only on a loopback host"),
        (dict(host="::", insecure=True), "--insecure serves only on a loopback host"),
        (dict(tls_cert=Path("server.pem")), "--tls-cert and --tls-key go together"),
        (dict(tls_key=Path("server.key")), "--tls-cert and --tls-key go together"),
        (dict(), "no TLS: pass --tls-cert and --tls-key, or --insecure"),
        (dict(tls_client_ca=Path("ca.pem"), insecure=True), "--tls-client-ca (mutual TLS) needs --tls-cert"),
        (
            dict(tls_cert=Path("server.pem"), tls_key=Path("server.key"), insecure=True),
            "--insecure contradicts --tls-cert/--tls-key",
        ),
    ],
)
def test_server_options_refused(options, message):
    with pytest.raises(Zk0Error) as refused:
        ServerOptions(**options).check()
    assert message in str(refused.value)


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1", "127.0.0.2"])
def test_insecure_is_allowed_on_loopback(host):
    ServerOptions(host=host, insecure=True).check()
    ServerOptions(host=host, tls_cert=Path("c"), tls_key=Path("k"), tls_client_ca=Path("ca")).check()


def test_server_refuses_insecure_off_loopback_before_touching_the_run_dir(demo_root, tmp_path):
    with pytest.raises(Zk0Error, match="loopback"):
        CoordinatorServer(
            small_config(demo_root), tmp_path / "run", ServerOptions(host="0.0.0.0", insecure=True)
        )
    assert not (tmp_path / "run").exists()


def test_participant_refuses_insecure_to_a_remote_coordinator():
    options = ClientOptions(coordinator="10.1.2.3:8443", dataset="demo:p0", name="p0", insecure=True)
    with pytest.raises(Zk0Error, match="--insecure only reaches a loopback coordinator"):
        ParticipantClient(options)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("alice short\n", "shorter than 16 characters"),
        (f"alice {'a' * 16}\nbob {'a' * 16}\n", "token reused"),
        (f"alice {'a' * 16} extra\n", "expected 'NAME TOKEN'"),
        ("# nothing\n", "holds no tokens"),
    ],
)
def test_bad_tokens_files_are_refused(tmp_path, text, message):
    path = tmp_path / "tokens"
    path.write_text(text)
    with pytest.raises(Zk0Error, match=message):
        read_tokens(path)
