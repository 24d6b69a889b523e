"""A run directory never loses a record: a coordinator killed (SIGKILL, a real process) at any point resumes
with exactly one record per completed round, no spool leftovers and no torn metrics line."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest
from conftest import set_args, small_config, small_overrides
from test_federation import BIN, client_thread, free_port, metrics, wait_for

from coordinator.server import CoordinatorServer, ServerOptions
from participant.runtime import description
from zk0.config import config_to_toml
from zk0.data import open_source
from zk0.payload import sha256_hex
from zk0.transport import GRPC_OPTIONS
from zk0.v1 import federation_pb2 as pb
from zk0.v1 import federation_pb2_grpc as pb_grpc

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


def serve_command(config, tmp_path: Path, run: Path, port: int) -> list[str]:
    config_path = tmp_path / "config.toml"
    config_path.write_text(config_to_toml(config))
    command = [str(BIN / "zk0-coordinator"), "serve", "--config", str(config_path), "--run-dir", str(run)]
    return command + ["--port", str(port), "--insecure", "--device", "cpu"]


def aggregated(run: Path) -> dict[int, list[dict]]:
    out: dict[int, list[dict]] = {}
    for entry in metrics(run):
        if "version" in entry:
            out.setdefault(entry["round"], []).append(entry)
    return out


@pytest.mark.slow
def test_coordinator_killed_between_aggregating_and_recording_a_round_redoes_it(demo_root, tmp_path):
    """SIGKILL as soon as round 1's global model file appears (its evaluation and record still to come):
    whichever side of the record the kill lands, the resumed run has one record per completed round."""
    config = small_config(
        demo_root,
        "federation.rounds=2",
        "federation.min_participants=2",
        "federation.min_updates=2",
        "eval.batches=4",  # the evaluation between the model file and its record takes a moment
        "federation.join_timeout_s=600",
        'data.participants=["demo:p0", "demo:p1"]',
    )
    run, port = tmp_path / "run", free_port()
    command = serve_command(config, tmp_path, run, port)
    first_log = tmp_path / "first.log"
    first = subprocess.Popen(command, env=ENV, stdout=first_log.open("w"), stderr=subprocess.STDOUT)
    lock, errors = threading.Lock(), []
    model_1 = run / "models" / "round-0001.safetensors"
    try:
        wait_for(lambda: "serving on" in first_log.read_text(), 600, "the coordinator to serve")
        threads = [client_thread(port, spec, lock, errors, give_up_s=600) for spec in ("demo:p0", "demo:p1")]
        wait_for(model_1.exists, 600, "round 1's global model file")
        first.send_signal(signal.SIGKILL)
        first.wait()
        killed_state = json.loads((run / "state.json").read_text())
        killed_records = aggregated(run)
        assert killed_state["completed_round"] <= 1
        second_log = tmp_path / "second.log"
        second = subprocess.run(
            command, env=ENV, stdout=second_log.open("w"), stderr=subprocess.STDOUT, timeout=900
        )
    finally:
        first.kill()
    for thread in threads:
        thread.join(timeout=60)
    assert second.returncode == 0, second_log.read_text()[-3000:]
    assert not errors
    records = aggregated(run)
    assert sorted(records) == [0, 1, 2], (killed_state, sorted(killed_records))
    for round_idx, entries in records.items():
        assert len(entries) == 1, f"round {round_idx} has {len(entries)} aggregated records"
        model = run / "models" / f"round-{round_idx:04d}.safetensors"
        assert sha256_hex(model.read_bytes()) == entries[0]["version"]
    assert json.loads((run / "state.json").read_text())["completed_round"] == 2
    losses = {r: e[0]["eval"]["composite"]["loss"] for r, e in records.items() if "eval" in e[0]}
    best = json.loads((run / "best.json").read_text())
    assert best["loss"] == min(losses.values()) and best["round"] == min(losses, key=losses.get)
    assert (run / "final" / "model.safetensors").exists()


class StalledUploader:
    """A participant speaking the protocol with the bare stub that starts an upload and never finishes it,
    so the coordinator holds a half-written spool (.part) file when it is killed."""

    def __init__(self, port: int, dataset: pb.DatasetDescription) -> None:
        self.dataset = dataset  # the run's features: the coordinator refuses a dataset that does not fit
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=GRPC_OPTIONS)
        self.stub = pb_grpc.FederationStub(self.channel)
        self.release = threading.Event()
        self.error: BaseException | None = None

    def join_and_start_upload(self) -> None:
        dataset = self.dataset
        deadline = time.monotonic() + 600
        while True:  # the coordinator process is still starting
            try:
                reply = self.stub.Join(
                    pb.JoinRequest(participant_name="stalled", dataset=dataset), timeout=10
                )
                break
            except grpc.RpcError:
                assert time.monotonic() < deadline, "the coordinator never started serving"
                time.sleep(0.5)
        session = reply.session_id
        request = pb.GetTaskRequest(participant_id="stalled", session_id=session)
        while (reply := self.stub.GetTask(request, timeout=10)).WhichOneof("task") != "train":
            assert time.monotonic() < deadline, "no train task"
            time.sleep(0.2)
        task = reply.train
        header = pb.UpdateHeader(
            participant_id="stalled",
            round=task.round,
            base_version=task.model_version,
            sample_count=8,
            metrics={"policy_loss": 1.0},
            size=task.model_size,
            sha256="0" * 64,
            session_id=session,
        )

        def messages():
            yield pb.UploadUpdateRequest(header=header)
            yield pb.UploadUpdateRequest(chunk=pb.Chunk(offset=0, data=b"\0" * 4096))
            self.release.wait(300)  # the rest never comes

        def upload() -> None:
            try:
                self.stub.UploadUpdate(messages(), timeout=300)
            except grpc.RpcError as e:  # the coordinator is killed under it: expected
                self.error = e

        threading.Thread(target=upload, daemon=True).start()

    def close(self) -> None:
        self.release.set()
        self.channel.close()


@pytest.mark.slow
def test_resume_after_a_kill_mid_upload_drops_spool_parts_and_a_torn_metrics_line(demo_root, tmp_path):
    config = small_config(
        demo_root,
        "federation.rounds=1",
        "federation.min_participants=1",
        "federation.min_updates=1",
        "federation.join_timeout_s=600",
        'data.participants=["demo:p0"]',
    )
    run, port = tmp_path / "run", free_port()
    log = tmp_path / "coordinator.log"
    coordinator = subprocess.Popen(
        serve_command(config, tmp_path, run, port), env=ENV, stdout=log.open("w"), stderr=subprocess.STDOUT
    )
    uploader = StalledUploader(port, description(open_source("demo:p0", config), "demo:p0"))
    try:
        uploader.join_and_start_upload()
        wait_for(lambda: list(run.glob("updates/round-0001/.*.part")), 300, "the upload's spool file")
        coordinator.send_signal(signal.SIGKILL)
        coordinator.wait()
    finally:
        coordinator.kill()
        uploader.close()
    assert list(run.glob("updates/round-0001/.*.part")), "the kill left no spool file to clean up"
    before = metrics(run)
    with (run / "metrics.jsonl").open("a") as f:
        f.write('{"attempt": 1, "base_version": "')  # a crash (or a full disk) in the middle of an append

    server = CoordinatorServer(config, run, ServerOptions(insecure=True, device="cpu"))  # resumes
    server.store.run.close()
    assert not list(run.rglob("*.part"))
    assert metrics(run) == before  # the torn line is gone, every whole record kept
    assert server.coordinator.global_round == 0


@pytest.fixture
def small_disk(tmp_path):
    """A 1200 KiB tmpfs: room for the initial model file (~770 KiB) but not for the best model's copy."""
    mount = tmp_path / "disk"
    mount.mkdir()
    command = ["mount", "-t", "tmpfs", "-o", "size=1200k", "tmpfs", str(mount)]
    mounted = subprocess.run(command, capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", str(mount)], check=False)


@pytest.mark.slow
def test_a_full_disk_stops_with_one_line_and_the_run_resumes_once_space_is_freed(demo_root, small_disk):
    run = small_disk / "run"
    overrides = small_overrides(
        demo_root,
        'data.participants=["demo:p0", "demo:p1"]',
        "federation.min_participants=2",
        "federation.min_updates=2",
    )
    sets = set_args(overrides)
    command = [sys.executable, "-m", "zk0.cli", "simulate", "--run-dir", str(run), "--no-progress", *sets]
    root = Path(__file__).parent.parent

    full = subprocess.run(command, capture_output=True, text=True, timeout=900, cwd=root, env=ENV)
    assert full.returncode == 2, full.stderr[-3000:]
    assert "Traceback" not in full.stderr, full.stderr[-3000:]
    assert full.stderr.strip().splitlines()[-1].startswith("zk0: error: no space left on the device")

    subprocess.run(["mount", "-o", "remount,size=256m", str(small_disk)], check=True)
    freed = subprocess.run(command, capture_output=True, text=True, timeout=900, cwd=root, env=ENV)
    assert freed.returncode == 0, freed.stderr[-3000:]
    records = aggregated(run)
    assert sorted(records) == [0, 1] and all(len(e) == 1 for e in records.values())
    assert json.loads((run / "state.json").read_text())["completed_round"] == 1
    assert (run / "final" / "model.safetensors").exists()
