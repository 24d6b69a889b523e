"""Flawed uploads are refused with a precise reason and never stop the round; a corrupt model is refused.

Everything is real: the coordinator's gRPC server on 127.0.0.1, two honest ParticipantClients training the
tiny demo SmolVLA, and four rogue participants written here against the generated stub, each uploading one
flawed update. A second part serves a corrupt model from a minimal gRPC server and checks that a
participant refuses it.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from concurrent import futures

import grpc
import pytest
import torch
from conftest import small_config

from coordinator.server import CoordinatorServer, ServerOptions
from participant.client import DOWNLOAD_ATTEMPTS, ClientOptions, ParticipantClient
from participant.runtime import description
from zk0.errors import Zk0Error
from zk0.payload import sha256_hex
from zk0.tensors import Manifest, decode_state, encode_state
from zk0.transfer import iter_chunks
from zk0.transport import GRPC_OPTIONS
from zk0.v1 import federation_pb2 as pb
from zk0.v1 import federation_pb2_grpc as pb_grpc

HONEST = {"honest-a": "demo:p0", "honest-b": "demo:p1"}
ROUND_TIMEOUT_S = 60.0
ROGUE_CHUNK = 256 * 1024  # several chunks per upload, whatever the coordinator's own chunk size


# ---------------------------------------------------------------------------------------- the rogues


def matrix_name(manifest: Manifest) -> str:
    return next(spec.name for spec in manifest if len(spec.shape) == 2)


def float_name(manifest: Manifest) -> str:
    return next(spec.name for spec in manifest if spec.dtype.startswith(("float", "bfloat")))


def corrupt_hash(state: dict[str, torch.Tensor], manifest: Manifest) -> tuple[bytes, str]:
    """Good bytes with one byte flipped, declared under the hash of the unflipped bytes."""
    payload = bytearray(encode_state(state))
    declared = sha256_hex(payload)
    payload[len(payload) // 2] ^= 0xFF
    return bytes(payload), declared


def wrong_shape(state: dict[str, torch.Tensor], manifest: Manifest) -> tuple[bytes, str]:
    """One matrix a row longer than the manifest says (so the payload is not below the manifest's size)."""
    name = matrix_name(manifest)
    state = {**state, name: torch.cat([state[name], state[name][:1]])}
    payload = encode_state(state)
    return payload, sha256_hex(payload)


def with_nan(state: dict[str, torch.Tensor], manifest: Manifest) -> tuple[bytes, str]:
    name = float_name(manifest)
    tensor = state[name].clone()
    tensor.view(-1)[0] = float("nan")
    payload = encode_state({**state, name: tensor})
    return payload, sha256_hex(payload)


def unchanged(state: dict[str, torch.Tensor], manifest: Manifest) -> tuple[bytes, str]:
    payload = encode_state(state)
    return payload, sha256_hex(payload)


ROGUES = {
    # name: (payload maker, header round relative to the task's, expected refusal)
    "rogue-hash": (corrupt_hash, 0, pb.REFUSAL_CORRUPT_PAYLOAD),
    "rogue-shape": (wrong_shape, 0, pb.REFUSAL_BAD_TENSORS),
    "rogue-nan": (with_nan, 0, pb.REFUSAL_BAD_TENSORS),
    "rogue-stale": (unchanged, -1, pb.REFUSAL_WRONG_ROUND),
}


class Rogue:
    """A participant speaking the protocol with the bare stub: joins, keeps its lease, takes the round's
    task, downloads the model (checking its hash), uploads one flawed update, then waits for 'done'."""

    def __init__(self, name: str, port: int, ready: threading.Event) -> None:
        self.name = name
        self.make, self.round_offset, _ = ROGUES[name]
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=GRPC_OPTIONS)
        self.stub = pb_grpc.FederationStub(self.channel)
        self.ready = ready
        self.dataset = pb.DatasetDescription()  # set before `ready`: a full description, like a real one's
        self.stop = threading.Event()
        self.reply: pb.UploadUpdateResponse | None = None
        self.error: BaseException | None = None
        self.told_done = False
        self.session = ""  # issued at Join, carried by every later call
        self.thread = threading.Thread(target=self._main, name=f"test-{name}", daemon=True)

    def _heartbeats(self) -> None:
        while not self.stop.wait(0.5):
            try:
                request = pb.HeartbeatRequest(participant_id=self.name, session_id=self.session)
                reply = self.stub.Heartbeat(request, timeout=5)
            except grpc.RpcError:
                continue
            if not reply.registered and reply.run_active:
                self.error = AssertionError(f"{self.name}: the coordinator forgot us (lease lapsed)")

    def _main(self) -> None:
        try:
            self._take_part()
        except BaseException as e:  # noqa: BLE001 - reported by the test
            self.error = e
        finally:
            self.stop.set()
            self.channel.close()

    def _task(self) -> pb.GetTaskResponse:
        return self.stub.GetTask(
            pb.GetTaskRequest(participant_id=self.name, session_id=self.session), timeout=10
        )

    def _take_part(self) -> None:
        assert self.ready.wait(120), "the honest participants never became ready"
        self.session = self.stub.Join(
            pb.JoinRequest(participant_name=self.name, dataset=self.dataset),
            timeout=10,
        ).session_id
        threading.Thread(target=self._heartbeats, name=f"test-{self.name}-hb", daemon=True).start()
        deadline = time.monotonic() + 120
        while (reply := self._task()).WhichOneof("task") != "train":
            assert reply.WhichOneof("task") == "wait", reply
            assert time.monotonic() < deadline, "no train task within 120s"
            time.sleep(0.2)
        task = reply.train
        state = decode_state(self._download(task))
        payload, declared = self.make(state, Manifest.from_proto(task.manifest))
        header = pb.UpdateHeader(
            participant_id=self.name,
            round=task.round + self.round_offset,
            base_version=task.model_version,
            sample_count=8,
            metrics={"policy_loss": 1.0},
            size=len(payload),
            sha256=declared,
            session_id=self.session,
        )

        def messages():
            yield pb.UploadUpdateRequest(header=header)
            for offset, view in iter_chunks(payload, ROGUE_CHUNK):
                yield pb.UploadUpdateRequest(chunk=pb.Chunk(offset=offset, data=bytes(view)))

        self.reply = self.stub.UploadUpdate(messages(), timeout=60)
        while (reply := self._task()).WhichOneof("task") != "done":
            assert time.monotonic() < deadline, "the run never said done"
            time.sleep(0.2)
        self.told_done = True

    def _download(self, task: pb.TrainTask) -> bytes:
        parts: list[bytes] = []
        request = pb.DownloadModelRequest(
            participant_id=self.name, version=task.model_version, offset=0, session_id=self.session
        )
        for message in self.stub.DownloadModel(request, timeout=30):
            if message.HasField("info"):
                assert message.info.version == task.model_version
                assert message.info.size == task.model_size
            else:
                assert message.chunk.offset == sum(len(p) for p in parts)
                parts.append(message.chunk.data)
        data = b"".join(parts)
        assert sha256_hex(data) == task.model_version, "the coordinator served a model not matching its hash"
        return data


def wait_until_in_loop(server: CoordinatorServer, clients: dict[str, ParticipantClient]) -> None:
    """Until each honest client has built its runtime, re-joined with it, and started heartbeating: from
    then on its lease cannot lapse, so the round starting next samples exactly the six of us."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        beating = {t.name for t in threading.enumerate()}
        if all(
            c.runtime is not None
            and f"zk0-heartbeat-{name}" in beating
            and server.coordinator.is_registered(name)
            for name, c in clients.items()
        ):
            return
        time.sleep(0.1)
    raise AssertionError("the honest participants did not get ready within 120s")


@pytest.mark.slow
def test_flawed_uploads_are_refused_and_the_round_completes_from_the_others(demo_root, tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="coordinator.rounds")
    config = small_config(
        demo_root,
        "federation.server_lr=1.0",  # plain FedAvg: the global model is the mean of the accepted updates
        f"federation.round_timeout_s={ROUND_TIMEOUT_S}",
        f"federation.min_participants={len(HONEST) + len(ROGUES)}",
        "federation.min_updates=2",
        "federation.fraction=1.0",
    )
    run_dir = tmp_path / "run"
    server = CoordinatorServer(config, run_dir, ServerOptions(host="127.0.0.1", insecure=True, device="cpu"))
    manifest = server.coordinator.manifest
    port = server.start()

    train_lock = threading.Lock()
    clients = {
        name: ParticipantClient(
            ClientOptions(
                coordinator=f"127.0.0.1:{port}",
                dataset=spec,
                name=name,
                insecure=True,
                device="cpu",
                progress=False,
                give_up_s=30.0,
            ),
            train_lock=train_lock,
        )
        for name, spec in HONEST.items()
    }
    rounds_trained: dict[str, int] = {}
    failures: list[BaseException] = []

    def take_part(name: str) -> None:
        try:
            rounds_trained[name] = clients[name].run()
        except BaseException as e:  # noqa: BLE001 - reported by the test
            failures.append(e)

    honest_threads = [
        threading.Thread(target=take_part, args=(name,), name=f"test-{name}", daemon=True) for name in HONEST
    ]
    ready = threading.Event()
    rogues = {name: Rogue(name, port, ready) for name in ROGUES}
    for thread in honest_threads:
        thread.start()
    for rogue in rogues.values():
        rogue.thread.start()
    try:
        wait_until_in_loop(server, clients)
        for rogue in rogues.values():
            rogue.dataset = description(clients["honest-a"].runtime.source, "demo:p0")
        ready.set()
        server.wait(timeout=ROUND_TIMEOUT_S + 60)
    finally:
        server.stop_event.set()
        for rogue in rogues.values():
            rogue.stop.set()
            rogue.thread.join(timeout=30)
        for thread in honest_threads:
            thread.join(timeout=30)

    assert not failures, failures
    assert rounds_trained == {name: 1 for name in HONEST}
    for rogue in rogues.values():
        assert rogue.error is None, f"{rogue.name}: {rogue.error!r}"
        assert rogue.told_done, rogue.name

    # Each rogue got a refusal naming what is wrong with its update.
    replies = {name: rogue.reply for name, rogue in rogues.items()}
    for name, reply in replies.items():
        assert reply is not None, name
        assert not reply.accepted, name
        assert reply.refusal == ROGUES[name][2], (name, pb.Refusal.Name(reply.refusal), reply.reason)
    assert "sha256 mismatch" in replies["rogue-hash"].reason
    shape_reason = replies["rogue-shape"].reason
    assert matrix_name(manifest) in shape_reason and "shape" in shape_reason, shape_reason
    nan_reason = replies["rogue-nan"].reason
    assert float_name(manifest) in nan_reason and "non-finite" in nan_reason, nan_reason
    assert "stale" in replies["rogue-stale"].reason, replies["rogue-stale"].reason

    # The round completed from the honest participants alone, long before its deadline.
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [entry["round"] for entry in lines] == [0, 1]
    entry = lines[1]
    assert entry["attempt"] == 1
    participants = entry["participants"]
    assert participants["sampled"] == sorted([*HONEST, *ROGUES])
    assert participants["accepted"] == sorted(HONEST)
    assert participants["dropped"] == []
    refused = {r["participant"]: r["reason"] for r in participants["refused"]}
    assert set(refused) == set(ROGUES)
    assert refused["rogue-hash"].startswith("corrupt_payload: sha256 mismatch")
    assert refused["rogue-shape"].startswith("bad_tensors:") and "shape" in refused["rogue-shape"]
    assert refused["rogue-nan"].startswith("bad_tensors:") and "non-finite" in refused["rogue-nan"]
    assert refused["rogue-stale"].startswith("wrong_round: stale round 0")
    assert set(entry["updates"]) == set(HONEST)
    assert entry["bytes"]["up"] == sum(u["bytes"] for u in entry["updates"].values())
    assert "deadline passed" not in caplog.text  # it ended when every sampled participant had answered
    assert "version" in entry

    # Nothing of the rogues was kept: only the honest updates are spooled, and no partial file remains.
    spooled = sorted(p.name for p in (run_dir / "updates" / "round-0001").iterdir())
    assert spooled == ["accepted.jsonl", *(f"{name}.safetensors" for name in sorted(HONEST))]
    # ... and the new global model is the sample-weighted mean of the honest updates alone.
    updates = {
        name: decode_state((run_dir / "updates" / "round-0001" / f"{name}.safetensors").read_bytes())
        for name in HONEST
    }
    weights = {name: float(entry["updates"][name]["sample_count"]) for name in HONEST}
    global_state = decode_state((run_dir / "models" / "round-0001.safetensors").read_bytes())
    assert sha256_hex((run_dir / "models" / "round-0001.safetensors").read_bytes()) == entry["version"]
    assert set(global_state) == set(manifest.names)
    for spec in manifest:
        mean = sum(weights[n] * updates[n][spec.name].double() for n in HONEST) / sum(weights.values())
        torch.testing.assert_close(global_state[spec.name], mean.to(global_state[spec.name].dtype))

    # The coordinator logged every refusal.
    logged = [r.getMessage() for r in caplog.records if r.name == "coordinator.rounds"]
    for name in ROGUES:
        assert any(f"refused update from {name}" in m for m in logged), (name, logged)


# ---------------------------------------------------------------------------------------- a corrupt model


class ModelServer(pb_grpc.FederationServicer):
    """Serves one fixed byte string as whatever model version is asked for; only DownloadModel."""

    def __init__(self, info_size: int, info_version: str, data: bytes) -> None:
        self.info_size = info_size
        self.info_version = info_version
        self.data = data
        self.calls = 0

    def DownloadModel(self, request, context):
        self.calls += 1
        yield pb.DownloadModelResponse(info=pb.ModelInfo(version=self.info_version, size=self.info_size))
        for offset, view in iter_chunks(self.data, 64 * 1024, start=request.offset):
            yield pb.DownloadModelResponse(chunk=pb.Chunk(offset=offset, data=bytes(view)))


@pytest.fixture
def model_server():
    servers = []

    def start(servicer: ModelServer) -> int:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=2), options=GRPC_OPTIONS)
        pb_grpc.add_FederationServicer_to_server(servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        servers.append(server)
        return port

    yield start
    for server in servers:
        server.stop(grace=None).wait()


GOOD = encode_state({"a.weight": torch.arange(40_000, dtype=torch.float32).reshape(200, 200)})
FLIPPED = GOOD[:1000] + bytes([GOOD[1000] ^ 0x01]) + GOOD[1001:]


@pytest.mark.parametrize(
    ("served", "info_size", "info_version", "corrupt"),
    [
        (GOOD, len(GOOD), sha256_hex(GOOD), False),  # the control: the same path accepts good bytes
        (FLIPPED, len(GOOD), sha256_hex(GOOD), True),  # one bit differs: hash mismatch
        (GOOD[: len(GOOD) // 2], len(GOOD), sha256_hex(GOOD), True),  # the stream ends early
        (FLIPPED, len(FLIPPED), sha256_hex(FLIPPED), True),  # info announces another version
    ],
    ids=["good", "flipped-byte", "truncated", "other-version"],
)
def test_participant_refuses_a_corrupt_model(model_server, caplog, served, info_size, info_version, corrupt):
    caplog.set_level(logging.ERROR, logger="participant.client")
    servicer = ModelServer(info_size, info_version, served)
    port = model_server(servicer)
    client = ParticipantClient(
        ClientOptions(coordinator=f"127.0.0.1:{port}", dataset="demo:p0", name="p0", insecure=True)
    )
    task = pb.TrainTask(round=1, model_version=sha256_hex(GOOD), model_size=len(GOOD))
    try:
        if not corrupt:
            assert client.download(task) == GOOD
            assert servicer.calls == 1
            return
        with pytest.raises(Zk0Error, match="corrupt") as refused:
            client.download(task)
    finally:
        client.channel.close()
    assert sha256_hex(GOOD)[:12] in str(refused.value)
    assert servicer.calls == DOWNLOAD_ATTEMPTS
    refusals = [r.getMessage() for r in caplog.records if "refusing model" in r.getMessage()]
    assert len(refusals) == DOWNLOAD_ATTEMPTS, refusals
