"""The upload intake under a raw gRPC client: concurrent retries, lying headers and metrics, evaluations from
outside the round, updates too far from their base, and a full disk on the coordinator.

Everything is real except the model: the round state machine with its gRPC service on 127.0.0.1, its run
directory on disk (a 64 KiB tmpfs where the point is a full disk), and participants written here against the
generated stub. The model is a small synthetic state (two tensors), so a round takes milliseconds.
"""

from __future__ import annotations

import logging
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
import torch

from coordinator import strategies
from coordinator.adaptive import records_from_metrics
from coordinator.intake import StorageError, keep_attempt
from coordinator.rounds import Coordinator
from coordinator.service import FederationService
from coordinator.store import RunStore
from participant.client import RETRYABLE, ClientOptions, ParticipantClient
from zk0.config import load_config
from zk0.payload import sha256_hex
from zk0.records import RoundEntry
from zk0.tensors import Manifest, decode_state, encode_state
from zk0.transfer import iter_chunks
from zk0.transport import GRPC_OPTIONS
from zk0.v1 import federation_pb2 as pb
from zk0.v1 import federation_pb2_grpc as pb_grpc

CONFIGS = Path(__file__).parent.parent / "configs"
CHUNK = 64 * 1024
MAX_SAMPLES = 8  # train.local_steps x train.batch_size below


def base_state() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "expert.weight": torch.randn(256, 256, generator=g),  # 256 KiB: several chunks, more than the tmpfs
        "expert.norm": torch.randn(64, generator=g).to(torch.bfloat16),
    }


def moved(base: dict[str, torch.Tensor], seed: int, scale: float = 0.01) -> dict[str, torch.Tensor]:
    """An update `scale` x noise away from `base`, like a round of local training."""
    g = torch.Generator().manual_seed(seed)
    return {n: (t.float() + scale * torch.randn(t.shape, generator=g)).to(t.dtype) for n, t in base.items()}


def fedavg(updates: dict[str, dict[str, torch.Tensor]], weights: dict[str, float]) -> dict[str, torch.Tensor]:
    """The coordinator's FedAvg, recomputed: fp32 sums in name order, divided, cast back."""
    total = sum(weights[n] for n in updates)
    first = next(iter(updates.values()))
    mean = {}
    for tensor in first:
        acc = torch.zeros(first[tensor].shape, dtype=torch.float32)
        for name in sorted(updates):
            acc.add_(updates[name][tensor].float(), alpha=weights[name])
        mean[tensor] = (acc / total).to(first[tensor].dtype)
    return mean


def wait_for(predicate, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


class Federation:
    """A coordinator serving gRPC on 127.0.0.1 over the synthetic model, its driver thread recording each
    round's entry as the real server would."""

    def __init__(self, tmp_path: Path, *overrides: str) -> None:
        self.config = load_config(
            CONFIGS / "demo.toml",
            [
                f'demo.root="{tmp_path / "demo"}"',
                "train.local_steps=2",
                "train.batch_size=4",
                "federation.rounds=1",
                "federation.server_lr=1.0",
                "federation.lease_s=60",
                "federation.round_timeout_s=60",
                "federation.join_timeout_s=60",
                'federation.on_join_timeout="stop"',
                *overrides,
            ],
        )
        self.store, _ = RunStore.open(tmp_path / "run", self.config)
        self.base = base_state()
        data = encode_state(self.base)
        self.coordinator = Coordinator(
            self.config, self.store, Manifest.of(self.base), strategies.make(self.config)
        )
        self.coordinator.set_global(0, data, self.store.save_global(0, data))
        service = FederationService(self.coordinator, tokens=None, config_toml="", frozen_sha256="")
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=8), options=GRPC_OPTIONS)
        pb_grpc.add_FederationServicer_to_server(service, self.server)
        self.target = f"127.0.0.1:{self.server.add_insecure_port('127.0.0.1:0')}"
        self.server.start()
        self.channel = grpc.insecure_channel(self.target, options=GRPC_OPTIONS)
        self.stub = pb_grpc.FederationStub(self.channel)
        self.entries: list[RoundEntry] = []
        self.sessions: dict[str, str] = {}
        self.error: BaseException | None = None
        self.stop = threading.Event()
        self.driver = threading.Thread(target=self._drive, name="test-rounds", daemon=True)

    def _drive(self) -> None:
        try:
            self.coordinator.run(
                self.stop,
                lambda r, state, entry: self.entries.append(entry),
                lambda r, entry: self.entries.append(entry),
            )
        except BaseException as e:  # noqa: BLE001 - asserted by the test
            self.error = e

    def start(self, *names: str) -> None:
        self.join(*names)
        self.driver.start()

    def join(self, *names: str) -> None:
        dataset = pb.DatasetDescription(
            repo_id="synthetic", features=[pb.FeatureSpec(name="action", dtype="float32", shape=[2])]
        )
        for name in names:
            reply = self.stub.Join(pb.JoinRequest(participant_name=name, dataset=dataset), timeout=10)
            self.sessions[name] = reply.session_id

    def task(self, name: str) -> pb.TrainTask:
        deadline = time.monotonic() + 30
        request = pb.GetTaskRequest(participant_id=name, session_id=self.sessions[name])
        while (reply := self.stub.GetTask(request, timeout=10)).WhichOneof("task") != "train":
            assert time.monotonic() < deadline, f"no train task for {name}"
            time.sleep(0.05)
        return reply.train

    def header(self, name: str, task: pb.TrainTask, payload: bytes, **changes) -> pb.UpdateHeader:
        fields = dict(
            participant_id=name,
            round=task.round,
            base_version=task.model_version,
            sample_count=MAX_SAMPLES,
            metrics={"policy_loss": 0.5, "update_norm": 1.0},
            size=len(payload),
            sha256=sha256_hex(payload),
            session_id=self.sessions.get(name, ""),
        )
        fields.update(changes)
        return pb.UpdateHeader(**fields)

    def upload(self, header: pb.UpdateHeader, payload: bytes) -> pb.UploadUpdateResponse:
        return self.stub.UploadUpdate(messages(header, payload), timeout=30)

    def evaluate(self, name: str, task: pb.TrainTask, **metrics: float) -> pb.ReportEvaluationResponse:
        request = pb.ReportEvaluationRequest(
            participant_id=name,
            session_id=self.sessions.get(name, ""),
            round=task.round,
            version=task.model_version,
            metrics=metrics,
        )
        return self.stub.ReportEvaluation(request, timeout=10)

    def finish(self) -> RoundEntry:
        """The last round's entry, once the driver is done; the driver must not have failed."""
        self.driver.join(timeout=60)
        assert not self.driver.is_alive(), "the rounds never finished"
        assert self.error is None, repr(self.error)
        return self.entries[-1]

    def global_state(self) -> dict[str, torch.Tensor]:
        return decode_state(self.store.model_path(self.coordinator.global_round).read_bytes())

    def close(self) -> None:
        self.stop.set()
        if self.driver.is_alive():
            self.driver.join(timeout=30)
        self.channel.close()
        self.server.stop(grace=None).wait()
        self.store.run.close()


def messages(
    header: pb.UpdateHeader, payload: bytes, hold: threading.Event | None = None, chunk: int = CHUNK
) -> Iterator:
    """An upload's messages; with `hold`, the stream pauses after its first chunk until `hold` is set."""
    yield pb.UploadUpdateRequest(header=header)
    for offset, view in iter_chunks(payload, chunk):
        yield pb.UploadUpdateRequest(chunk=pb.Chunk(offset=offset, data=bytes(view)))
        if hold is not None:
            assert hold.wait(60), "the held upload was never released"


@pytest.fixture
def federation(tmp_path):
    made: list[Federation] = []

    def make(*overrides: str) -> Federation:
        made.append(Federation(tmp_path, *overrides))
        return made[-1]

    yield make
    for fed in made:
        fed.close()


# ---------------------------------------------------------------------------------------- item 1: retries


def test_a_concurrent_retry_is_refused_and_the_accepted_update_survives_into_the_aggregate(federation):
    fed = federation("federation.min_participants=2", "federation.min_updates=2")
    fed.start("p", "q")
    task = fed.task("p")
    update = moved(fed.base, seed=1)
    payload = encode_state(update)
    header = fed.header("p", task, payload)
    round_dir = fed.store.round_dir(task.round)

    hold = threading.Event()
    first: dict[str, object] = {}

    def first_upload() -> None:
        try:
            first["reply"] = fed.stub.UploadUpdate(messages(header, payload, hold), timeout=60)
        except grpc.RpcError as e:
            first["reply"] = e

    thread = threading.Thread(target=first_upload, name="test-first-upload", daemon=True)
    thread.start()
    try:
        wait_for(lambda: any(round_dir.glob("*.part")), "the first upload to be spooling")
        second = fed.upload(header, payload)  # the client's retry, while its first attempt still runs
    finally:
        hold.set()
        thread.join(timeout=60)

    assert not second.accepted
    assert second.refusal == pb.REFUSAL_NOT_IN_ROUND, pb.Refusal.Name(second.refusal)
    assert second.reason == "an upload from p is already in progress"
    assert isinstance(first["reply"], pb.UploadUpdateResponse), first["reply"]
    assert first["reply"].accepted, first["reply"]
    assert (round_dir / "p.safetensors").read_bytes() == payload

    other = moved(fed.base, seed=2)
    q_payload = encode_state(other)
    assert fed.upload(fed.header("q", fed.task("q"), q_payload, sample_count=4), q_payload).accepted

    entry = fed.finish()  # before the fix: FileNotFoundError on p's update, deleted by the losing attempt
    assert entry.participants.accepted == ["p", "q"]
    assert entry.participants.refused == []
    assert entry.aggregated
    expected = fedavg({"p": update, "q": other}, {"p": float(MAX_SAMPLES), "q": 4.0})
    got = fed.global_state()
    for name, tensor in expected.items():
        assert torch.equal(got[name], tensor), name
    assert sorted(p.name for p in round_dir.iterdir()) == ["accepted.jsonl", "p.safetensors", "q.safetensors"]


# ---------------------------------------------------------------- items 2-4: headers, metrics, evaluations


def test_lying_headers_and_evaluations_are_refused_and_never_recorded(federation):
    names = ["honest", "huge-count", "no-loss", "nan-loss"]
    fed = federation(f"federation.min_participants={len(names)}", "federation.min_updates=1")
    fed.start(*names)
    tasks = {name: fed.task(name) for name in names}
    fed.join("late")  # joins after the round was sampled: not in it
    task = tasks["honest"]

    # Evaluations: only from a participant sampled in the round, for its version, once, with finite metrics.
    assert fed.evaluate("honest", task, loss=0.25, samples=4.0).recorded
    again = fed.evaluate("honest", task, loss=0.1, samples=4.0)
    assert not again.recorded and "already reported" in again.reason, again.reason
    outsider = fed.evaluate("late", task, loss=1e9, samples=4.0)
    assert not outsider.recorded and "not sampled" in outsider.reason, outsider.reason
    infinite = fed.evaluate("nan-loss", task, loss=float("inf"), samples=4.0)
    assert not infinite.recorded and "'loss' = inf is not a finite number" in infinite.reason, infinite.reason
    no_loss = fed.evaluate("no-loss", task, samples=4.0)
    assert not no_loss.recorded and "'loss' missing" in no_loss.reason, no_loss.reason
    assert fed.evaluate("huge-count", task, loss=0.5, samples=4.0).recorded

    payload = encode_state(moved(fed.base, seed=3))
    rogue_headers = {
        "huge-count": fed.header("huge-count", task, payload, sample_count=10**18),
        "no-loss": fed.header("no-loss", task, payload, metrics={"update_norm": 1.0}),
        "nan-loss": fed.header("nan-loss", task, payload, metrics={"policy_loss": float("nan")}),
    }
    replies = {name: fed.upload(header, payload) for name, header in rogue_headers.items()}
    for name, reply in replies.items():
        assert not reply.accepted, name
        assert reply.refusal == pb.REFUSAL_BAD_HEADER, (name, pb.Refusal.Name(reply.refusal), reply.reason)
    assert replies["huge-count"].reason == (
        f"sample count {10**18} exceeds the round's {MAX_SAMPLES} (train.local_steps x train.batch_size)"
    )
    assert replies["no-loss"].reason == "update metrics: 'policy_loss' missing"
    assert replies["nan-loss"].reason == "update metrics: 'policy_loss' = nan is not a finite number"
    # the bound itself is allowed
    assert fed.upload(fed.header("honest", task, payload, sample_count=MAX_SAMPLES), payload).accepted

    entry = fed.finish()
    assert entry.participants.accepted == ["honest"]
    refused = {r.participant: r.reason for r in entry.participants.refused}
    assert set(refused) == set(rogue_headers)
    assert all(reason.startswith("bad_header: ") for reason in refused.values()), refused
    assert entry.participant_eval == {
        "honest": {"loss": 0.25, "samples": 4.0},
        "huge-count": {"loss": 0.5, "samples": 4.0},
    }
    # refused before spooling: nothing of theirs reached the disk
    round_dir = fed.store.round_dir(task.round)
    assert sorted(p.name for p in round_dir.iterdir()) == ["accepted.jsonl", "honest.safetensors"]
    # what the adaptive rules read from every aggregated round is there
    assert records_from_metrics(fed.entries, base_mu=0.0, base_lr=1e-4)[-1].train_losses == {"honest": 0.5}


# ------------------------------------------------------------------------- item 5: what an update weighs


def test_updates_far_from_their_base_are_refused_or_left_out(federation):
    honest = ["h1", "h2", "h3"]
    names = [*honest, "far", "huge"]
    fed = federation(f"federation.min_participants={len(names)}", "federation.min_updates=2")
    fed.start(*names)
    tasks = {name: fed.task(name) for name in names}
    updates = {name: moved(fed.base, seed=10 + i) for i, name in enumerate(honest)}
    updates["far"] = moved(fed.base, seed=20, scale=1.0)  # 100x the others: within the absolute bound
    for name, update in updates.items():
        payload = encode_state(update)
        assert fed.upload(fed.header(name, tasks[name], payload), payload).accepted, name

    # All values 3e38: finite and the right manifest, but would overflow the fp32 accumulator.
    huge = encode_state({n: torch.full(t.shape, 3e38).to(t.dtype) for n, t in fed.base.items()})
    reply = fed.upload(fed.header("huge", tasks["huge"], huge), huge)
    assert not reply.accepted
    assert reply.refusal == pb.REFUSAL_BAD_TENSORS, pb.Refusal.Name(reply.refusal)
    assert "exceeds federation.max_update_norm=10000" in reply.reason, reply.reason

    entry = fed.finish()
    assert entry.participants.accepted == honest
    refused = {r.participant: r.reason for r in entry.participants.refused}
    assert set(refused) == {"far", "huge"}
    assert "update_norm_median_factor=10 x the round's median" in refused["far"], refused["far"]
    assert all(0 < entry.updates[n].distance < 10 for n in honest), entry.updates
    expected = fedavg({n: updates[n] for n in honest}, dict.fromkeys(honest, float(MAX_SAMPLES)))
    got = fed.global_state()
    for name, tensor in expected.items():
        assert torch.equal(got[name], tensor), name


def test_an_aggregate_that_overflows_is_redone_without_the_update_that_broke_it(federation):
    fed = federation(
        "federation.min_participants=2",
        "federation.min_updates=1",
        "federation.max_update_norm=0",  # both bounds off: only the finite-aggregate check stands
        "federation.update_norm_median_factor=0",
    )
    fed.start("honest", "huge")
    task = fed.task("honest")
    update = moved(fed.base, seed=5)
    payload = encode_state(update)
    assert fed.upload(fed.header("honest", task, payload), payload).accepted
    huge = encode_state({n: torch.full(t.shape, 3e38).to(t.dtype) for n, t in fed.base.items()})
    assert fed.upload(fed.header("huge", fed.task("huge"), huge), huge).accepted

    entry = fed.finish()
    assert entry.participants.accepted == ["honest"]
    (refused,) = entry.participants.refused
    assert refused.participant == "huge"
    assert "aggregate with it is not finite" in refused.reason, refused.reason
    got = fed.global_state()
    for name, tensor in update.items():
        assert torch.isfinite(got[name].float()).all(), name
        assert torch.equal(got[name], tensor), name  # the mean of one update is that update


# -------------------------------------------------------------------------- item 6: a full disk


@pytest.fixture
def full_disk():
    """Mount a 64 KiB tmpfs on a directory (root only); yields a function that unmounts it."""
    mounted: list[Path] = []

    def mount(directory: Path):
        directory.mkdir(parents=True, exist_ok=True)
        command = ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(directory)]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
        mounted.append(directory)

        def unmount() -> None:
            subprocess.run(["umount", str(directory)], check=True)
            mounted.remove(directory)

        return unmount

    yield mount
    for directory in mounted:
        subprocess.run(["umount", "-l", str(directory)], check=False)


def storage_errors(caplog) -> list[str]:
    """What the coordinator logged about storage (the participant's own warnings aside)."""
    return [
        r.getMessage()
        for r in caplog.records
        if r.name.startswith("coordinator") and "No space left on device" in r.getMessage()
    ]


def test_a_full_disk_is_a_retryable_refusal_naming_the_cause(federation, full_disk, caplog):
    caplog.set_level(logging.ERROR)
    caplog.set_level(logging.WARNING, logger="participant.client")
    fed = federation("federation.min_participants=2", "federation.min_updates=2")
    round_dir = fed.store.round_dir(1)
    unmount = full_disk(round_dir)
    fed.start("p", "q")
    task = fed.task("p")
    update = moved(fed.base, seed=7)
    payload = encode_state(update)
    header = fed.header("p", task, payload)

    with pytest.raises(grpc.RpcError) as refused:  # small chunks: the file's buffer holds some at the end
        fed.stub.UploadUpdate(messages(header, payload, chunk=1000), timeout=30)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE, refused.value.code()
    assert refused.value.code() in RETRYABLE  # the participant retries it
    assert refused.value.details().startswith("coordinator storage: No space left on device")
    assert list(round_dir.iterdir()) == []  # the partial file is gone, though closing it failed too
    assert len(storage_errors(caplog)) == 1, storage_errors(caplog)  # logged once, naming the cause

    # The participant's own retry loop: it retries while the disk stays full, and gets through once there
    # is room again; the run goes on.
    client = ParticipantClient(
        ClientOptions(coordinator=fed.target, dataset="demo:p0", name="p", insecure=True)
    )
    replies: list = []
    retrying = threading.Thread(
        target=lambda: replies.append(client._call(lambda: fed.upload(header, payload), "upload")),
        name="test-participant-retry",
        daemon=True,
    )
    retrying.start()
    wait_for(lambda: len(storage_errors(caplog)) >= 2, "the participant's retry to hit the full disk too")
    unmount()
    retrying.join(timeout=60)
    client.channel.close()
    assert [reply.accepted for reply in replies] == [True]
    told = [r.getMessage() for r in caplog.records if r.name == "participant.client"]
    assert any("coordinator storage: No space left on device" in m for m in told), told
    other = moved(fed.base, seed=8)
    q_payload = encode_state(other)
    assert fed.upload(fed.header("q", fed.task("q"), q_payload), q_payload).accepted
    entry = fed.finish()
    assert entry.participants.accepted == ["p", "q"]
    assert entry.participants.refused == []
    expected = fedavg({"p": update, "q": other}, {"p": float(MAX_SAMPLES), "q": float(MAX_SAMPLES)})
    got = fed.global_state()
    for name, tensor in expected.items():
        assert torch.equal(got[name], tensor), name


def test_an_accepted_attempt_that_cannot_be_kept_is_a_storage_error_and_leaves_nothing(tmp_path, caplog):
    caplog.set_level(logging.ERROR, logger="coordinator.intake")
    attempt = tmp_path / ".p.1234.attempt.safetensors"
    attempt.write_bytes(b"verified bytes")
    recorded: list[str] = []
    with pytest.raises(StorageError, match=r"^coordinator storage: No such file or directory \(keeping"):
        keep_attempt(attempt, tmp_path / "gone" / "p.safetensors", lambda: recorded.append("p"))
    assert not attempt.exists() and recorded == []
    assert len(storage_messages(caplog, "No such file or directory")) == 1

    attempt.write_bytes(b"verified bytes")
    keep_attempt(attempt, tmp_path / "p.safetensors", lambda: recorded.append("p"))
    assert (tmp_path / "p.safetensors").read_bytes() == b"verified bytes" and recorded == ["p"]


def storage_messages(caplog, cause: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if cause in r.getMessage()]
