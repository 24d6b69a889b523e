"""The coordinator's server against hostile clients: idle streams, fuzzed calls, and a bounded shutdown.

Real gRPC on 127.0.0.1 against a real CoordinatorServer (the tiny demo SmolVLA); the raw clients are written
here against the generated stub; the shutdown test runs `zk0-coordinator serve` as a process.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from conftest import small_config
from test_federation import client_thread, free_port

from bench.fuzz_calls import Fuzzer
from coordinator.guard import CallGuard, one_line
from coordinator.server import CoordinatorServer, ServerOptions
from coordinator.transfers import Transfer, TransferGate, overdue
from zk0.config import config_to_toml
from zk0.ratelog import RateLimiter
from zk0.transport import GRPC_OPTIONS, token_metadata
from zk0.v1 import federation_pb2 as pb
from zk0.v1 import federation_pb2_grpc as pb_grpc

BIN = Path(sys.executable).parent
TOKENS = {"p0": "p0-token-0123456789", "p1": "p1-token-0123456789"}


# Two participants make a round; a 5 s lease and a 120 s round outlast the hostile streams' load.
ROBUSTNESS = ("federation.min_participants=2", "federation.lease_s=5", "federation.round_timeout_s=120")


def serve(
    demo_root: Path, tmp_path: Path, *overrides: str, tokens: bool = True
) -> tuple[CoordinatorServer, int]:
    path = None
    if tokens:
        path = tmp_path / "tokens"
        path.write_text("".join(f"{name} {token}\n" for name, token in TOKENS.items()))
    options = ServerOptions(insecure=True, device="cpu", tokens=path)
    server = CoordinatorServer(small_config(demo_root, *ROBUSTNESS, *overrides), tmp_path / "run", options)
    return server, server.start()


def open_idle_uploads(port: int, count: int, hold: threading.Event, metadata=()) -> list:
    """`count` UploadUpdate streams that send nothing until `hold` is set, over a few connections."""

    def nothing():
        hold.wait()
        return
        yield

    channels = [grpc.insecure_channel(f"127.0.0.1:{port}", options=GRPC_OPTIONS) for _ in range(4)]
    return [
        pb_grpc.FederationStub(channels[i % 4]).UploadUpdate.future(nothing(), metadata=metadata, timeout=300)
        for i in range(count)
    ]


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


# ---------------------------------------------------------------------------------------- idle streams


@pytest.mark.slow
def test_200_idle_upload_streams_leave_control_calls_answered_and_are_cancelled(demo_root, tmp_path):
    """Half with a valid token, half with none: Join, Heartbeat and GetTask are still answered, each within
    a deadline far below the idle streams' life; the streams holding slots are cancelled for want of a
    header, the rest refused at once (busy, or no token)."""
    server, port = serve(demo_root, tmp_path, "federation.header_timeout_s=2", "federation.max_transfers=4")
    hold = threading.Event()
    try:
        idle = open_idle_uploads(port, 100, hold, token_metadata(TOKENS["p0"]))
        idle += open_idle_uploads(port, 100, hold)
        channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=GRPC_OPTIONS)
        stub, md = pb_grpc.FederationStub(channel), token_metadata(TOKENS["p1"])
        joined = stub.Join(pb.JoinRequest(participant_name="p1"), metadata=md, timeout=10)  # still loading
        assert joined.run_id
        session = joined.session_id
        beat = stub.Heartbeat(
            pb.HeartbeatRequest(participant_id="p1", session_id=session), metadata=md, timeout=10
        )
        assert beat.registered
        task = stub.GetTask(
            pb.GetTaskRequest(participant_id="p1", session_id=session), metadata=md, timeout=10
        )
        assert task.WhichOneof("task") == "wait"

        wait_for(lambda: all(f.done() for f in idle), 60, "every idle stream to end")
        with_token = [f.exception().code() for f in idle[:100]]
        without = [f.exception().code() for f in idle[100:]]
        busy = grpc.StatusCode.RESOURCE_EXHAUSTED
        assert with_token.count(grpc.StatusCode.CANCELLED) >= 4  # the ones admitted: no header in time
        assert set(with_token) <= {grpc.StatusCode.CANCELLED, busy}
        assert set(without) <= {grpc.StatusCode.UNAUTHENTICATED, busy}  # a slot, if any, only for a moment
        assert server.transfers.in_progress == 0
        channel.close()
    finally:
        hold.set()
        server.stop()


class BigModel(pb_grpc.FederationServicer):
    """Serves 64 MiB, more than a client that stops reading lets through: the sends block."""

    def DownloadModel(self, request, context):
        for offset in range(64):
            yield pb.DownloadModelResponse(chunk=pb.Chunk(offset=offset << 20, data=bytes(1 << 20)))


def test_a_download_that_stops_reading_is_cancelled_and_frees_its_slot():
    """The production guard and watchdog on a bare gRPC server whose model is too big to buffer."""
    gate = TransferGate(max_transfers=1, header_timeout_s=1.0, idle_timeout_s=1.0)
    server = grpc.server(futures.ThreadPoolExecutor(4), interceptors=[CallGuard(gate)], options=GRPC_OPTIONS)
    pb_grpc.add_FederationServicer_to_server(BigModel(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=GRPC_OPTIONS)
    stub = pb_grpc.FederationStub(channel)
    try:
        stalled = stub.DownloadModel(pb.DownloadModelRequest(), timeout=120)
        next(stalled)  # then stop reading
        with pytest.raises(grpc.RpcError) as busy:  # the one slot is taken
            next(stub.DownloadModel(pb.DownloadModelRequest(), timeout=30))
        assert busy.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "coordinator busy" in busy.value.details()
        wait_for(lambda: gate.in_progress == 0, 60, "the stalled download to be cancelled")
        with pytest.raises(grpc.RpcError) as cancelled:
            sum(1 for _ in stalled)
        assert cancelled.value.code() == grpc.StatusCode.CANCELLED
        assert sum(1 for _ in stub.DownloadModel(pb.DownloadModelRequest(), timeout=60)) == 64  # slot free
    finally:
        gate.close()
        channel.close()
        server.stop(grace=1).wait(10)


def test_overdue_is_progress_based_never_a_cap_on_a_moving_transfer():
    upload = Transfer("upload", "peer", context=None, last_progress=100.0)
    assert overdue(upload, 105.0, header_timeout_s=10, idle_timeout_s=60) == ""
    assert overdue(upload, 111.0, header_timeout_s=10, idle_timeout_s=60) == "no header within 10s"
    upload.started = True
    assert overdue(upload, 111.0, header_timeout_s=10, idle_timeout_s=60) == ""
    assert overdue(upload, 161.0, header_timeout_s=10, idle_timeout_s=60) == "no bytes moved for 60s"
    upload.last_progress = 10_000.0  # hours after it opened, but it moved a moment ago
    assert overdue(upload, 10_030.0, header_timeout_s=10, idle_timeout_s=60) == ""
    upload.reading = False  # all bytes in: the coordinator's own checks follow, never cut
    assert overdue(upload, 99_999.0, header_timeout_s=10, idle_timeout_s=60) == ""
    download = Transfer("download", "peer", context=None, last_progress=0.0)
    assert overdue(download, 30.0, header_timeout_s=10, idle_timeout_s=60) == ""
    assert overdue(download, 61.0, header_timeout_s=10, idle_timeout_s=60) == "no bytes moved for 60s"


# ---------------------------------------------------------------------------------------- fuzzed calls


def test_rate_limiter_keeps_a_burst_per_key_and_counts_the_rest():
    limiter = RateLimiter(burst=3, period_s=1.0)
    assert [limiter.allow("a", 0.0)[0] for _ in range(10)] == [True] * 3 + [False] * 7
    assert limiter.allow("b", 0.5) == (True, 0)  # another peer has its own budget
    assert limiter.pending() == {"a": 7}
    assert limiter.allow("a", 1.0) == (True, 7)  # the next window's first line reports the suppressed
    assert limiter.pending() == {}


@pytest.mark.slow
@pytest.mark.parametrize("tokens", [True, False], ids=["tokens", "no-tokens"])
def test_fuzzed_calls_get_precise_codes_no_traceback_and_rate_limited_refusal_lines(
    demo_root, tmp_path, caplog, tokens
):
    caplog.set_level(logging.INFO)
    server, port = serve(demo_root, tmp_path, tokens=tokens)
    try:
        fuzzer = Fuzzer(
            port,
            tokens=list(TOKENS.values()) if tokens else [],
            names=list(TOKENS),
            version=server.coordinator.global_version,
            seed=7,
        )
        codes = fuzzer.run(300)
        fuzzer.close()
    finally:
        server.stop()
    assert codes["UNKNOWN"] == 0 and codes["INTERNAL"] == 0, (codes, fuzzer.examples)
    refused = sum(count for code, count in codes.items() if code != "OK")
    assert refused > 50
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"
    assert "Traceback" not in caplog.text
    lines = [
        r for r in caplog.records if r.name == "coordinator.guard" and r.getMessage().startswith("refused")
    ]
    assert lines and all(len(r.getMessage().splitlines()) == 1 for r in lines)
    assert len(lines) < refused / 3, "refusal lines are not rate-limited"
    assert "suppressed" in caplog.text


@pytest.mark.slow
def test_a_refusal_that_echoes_a_peers_newline_is_logged_as_one_line(demo_root, tmp_path, caplog):
    """A name with a newline once split the refusal line (and could forge a second, "accepted" one)."""
    caplog.set_level(logging.INFO)
    server, port = serve(demo_root, tmp_path, tokens=False)
    forged = "p0\n12:00:00 INFO coordinator.rounds: round 1: accepted update from p0"
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}", options=GRPC_OPTIONS) as channel:
            with pytest.raises(grpc.RpcError) as refused:
                pb_grpc.FederationStub(channel).GetTask(pb.GetTaskRequest(participant_id=forged), timeout=10)
    finally:
        server.stop()
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    lines = [r.getMessage() for r in caplog.records if r.name == "coordinator.guard"]
    assert len(lines) == 1 and len(lines[0].splitlines()) == 1, lines
    assert "\\n12:00:00" in lines[0]


def test_one_line_escapes_control_characters_and_keeps_the_rest():
    assert one_line("a\nb\r\tc\x1b[31m é") == "a\\nb\\r\\tc\\x1b[31m é"


# ---------------------------------------------------------------------------------------- shutdown


@pytest.mark.slow
def test_coordinator_process_finishes_an_honest_run_and_exits_with_hostile_streams_left_open(
    demo_root, tmp_path
):
    """A `zk0-coordinator serve` process: idle uploads and downloads that never read, and fuzzed calls,
    before and during an honest two-participant run and still open when it ends; the run completes and
    the process exits 0 (a generous timeout, no timing assertion)."""
    config = small_config(
        demo_root,
        *ROBUSTNESS,
        "federation.header_timeout_s=3",
        "federation.transfer_idle_timeout_s=5",
        "federation.lease_s=3",
    )
    config_path = tmp_path / "config.toml"
    config_path.write_text(config_to_toml(config))
    port, log_path = free_port(), tmp_path / "coordinator.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    command = [str(BIN / "zk0-coordinator"), "serve", "--config", str(config_path)]
    command += ["--run-dir", str(tmp_path / "run"), "--port", str(port), "--insecure", "--device", "cpu"]
    process = subprocess.Popen(command, env=env, stdout=log_path.open("w"), stderr=subprocess.STDOUT)
    hold = threading.Event()
    lock, errors = threading.Lock(), []
    try:
        wait_for(lambda: "serving on" in log_path.read_text(), 120, "the coordinator to listen")
        idle = open_idle_uploads(port, 40, hold)
        fuzzer = Fuzzer(port, tokens=[], names=["f0", "f1"], version="0" * 64, seed=3)
        fuzzer.run(200)
        threads = [client_thread(port, spec, lock, errors, give_up_s=120) for spec in ("demo:p0", "demo:p1")]
        wait_for(lambda: "run complete" in log_path.read_text(), 400, "the run to complete")
        idle += open_idle_uploads(port, 40, hold)  # open, and never closed, as the coordinator shuts down
        channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=GRPC_OPTIONS)
        download = pb_grpc.FederationStub(channel).DownloadModel(pb.DownloadModelRequest(version="0" * 64))
        fuzzer.run(100)
        returncode = process.wait(timeout=120)
        for thread in threads:
            thread.join(timeout=60)
    finally:
        process.kill()
        hold.set()
    log = log_path.read_text()
    assert returncode == 0, log[-3000:]
    assert not errors
    assert "Traceback" not in log
    assert fuzzer.codes["UNKNOWN"] == 0 and fuzzer.codes["INTERNAL"] == 0
    del download, idle
