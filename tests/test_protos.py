"""The wire contract: committed stubs are current, and payloads cross real gRPC on loopback intact."""

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
import torch
from google.protobuf import descriptor_pb2

from coordinator.rounds import TaskKind
from zk0.payload import PayloadRejected, sha256_hex
from zk0.protogen import REPO_ROOT
from zk0.tensors import Manifest, decode_state, encode_state
from zk0.transfer import ChunkAssembler, FileAssembler, iter_chunks
from zk0.v1 import federation_pb2 as pb
from zk0.v1 import federation_pb2_grpc as pb_grpc
from zk0.validation import Refusal, UpdateHeader, UpdateRejected, validate_tensors, validate_update

CHUNK = 1 << 20
MAX_BYTES = 64 << 20
GRPC_OPTIONS = [
    ("grpc.max_send_message_length", CHUNK + (64 << 10)),
    ("grpc.max_receive_message_length", CHUNK + (64 << 10)),
]


# ---------------------------------------------------------------------------------------- stub staleness


def run_check(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "zk0.protogen", "--check", "--root", str(root)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def copy_tree(dest: Path) -> Path:
    shutil.copytree(REPO_ROOT / "protos", dest / "protos")
    shutil.copytree(
        REPO_ROOT / "zk0" / "v1", dest / "zk0" / "v1", ignore=shutil.ignore_patterns("__pycache__")
    )
    return dest


def test_committed_stubs_are_current():
    result = run_check(REPO_ROOT)
    assert result.returncode == 0, result.stderr


def test_check_detects_a_modified_stub(tmp_path: Path):
    root = copy_tree(tmp_path)
    stub = root / "zk0" / "v1" / "federation_pb2_grpc.py"
    stub.write_text(stub.read_text() + "\n# edited by hand\n")
    result = run_check(root)
    assert result.returncode == 1
    assert "zk0/v1/federation_pb2_grpc.py (differs)" in result.stderr
    assert "python -m zk0.protogen" in result.stderr


def test_check_detects_a_proto_changed_without_regenerating(tmp_path: Path):
    root = copy_tree(tmp_path)
    proto = root / "protos" / "zk0" / "v1" / "federation.proto"
    proto.write_text(
        proto.read_text().replace("  string reason = 2;\n}", "  string reason = 2;\n  int64 extra = 3;\n}", 1)
    )
    (root / "zk0" / "v1" / "stray_pb2.py").write_text("")
    result = run_check(root)
    assert result.returncode == 1
    assert "zk0/v1/federation_pb2.py (differs)" in result.stderr
    assert "zk0/v1/stray_pb2.py (no .proto generates it)" in result.stderr


# ---------------------------------------------------------------------------------------- retired fields

# Fields nothing read (or that said what another field already says), deleted and reserved so that no later
# field reuses their number or name with another meaning.
RETIRED = {
    "JoinResponse": {"participant_id": 1},  # the id is the name it joined with
    "HeartbeatResponse": {"lease_seconds": 3},  # stated once, at join
    "Hyperparameters": {"schedule": 4, "batch_size": 6},  # fixed for the run: in the config sent at join
    "ModelInfo": {"manifest": 3},  # travels in the TrainTask
    "ReportEvaluationRequest": {"sample_count": 4},  # metrics["samples"]
}


def test_retired_fields_are_gone_and_reserved():
    file = descriptor_pb2.FileDescriptorProto()
    pb.DESCRIPTOR.CopyToProto(file)
    messages = {m.name: m for m in file.message_type}
    for message, fields in RETIRED.items():
        proto = messages[message]
        assert not set(fields) & {f.name for f in proto.field}, message
        assert set(fields) <= set(proto.reserved_name), message
        reserved = {n for r in proto.reserved_range for n in range(r.start, r.end)}
        assert set(fields.values()) <= reserved, message


def test_a_round_plan_carries_only_what_changes_per_round():
    assert [f.name for f in pb.Hyperparameters.DESCRIPTOR.fields] == ["local_steps", "lr", "mu", "seed"]


def test_the_coordinators_task_kinds_are_the_wire_oneof():
    oneof = pb.GetTaskResponse.DESCRIPTOR.oneofs_by_name["task"]
    assert [k.value for k in TaskKind] == [f.name for f in oneof.fields]


# ---------------------------------------------------------------------------------------- loopback transfers


class TinyFederation(pb_grpc.FederationServicer):
    """Serves one model and spools uploads with the real codec and validation, nothing else."""

    def __init__(self, model: bytes, spool: Path) -> None:
        self.model = model
        self.version = sha256_hex(model)
        self.manifest = Manifest.of(decode_state(model))
        self.spool = spool

    def DownloadModel(self, request: pb.DownloadModelRequest, context) -> Iterator[pb.DownloadModelResponse]:
        if request.version != self.version:
            context.abort(grpc.StatusCode.NOT_FOUND, f"unknown version {request.version[:12]}")
        info = pb.ModelInfo(version=self.version, size=len(self.model))
        yield pb.DownloadModelResponse(info=info)
        for offset, piece in iter_chunks(self.model, CHUNK, start=request.offset):
            yield pb.DownloadModelResponse(chunk=pb.Chunk(offset=offset, data=bytes(piece)))

    def UploadUpdate(self, request_iterator, context) -> pb.UploadUpdateResponse:
        first = next(request_iterator)
        header = UpdateHeader.from_proto(first.header)
        try:
            validate_update(
                header, self.manifest, current_round=1, current_version=self.version, max_bytes=MAX_BYTES
            )
            path = self.spool / f"{header.participant_id}.safetensors"
            with FileAssembler(path, header.size, header.sha256, MAX_BYTES) as assembler:
                for message in request_iterator:
                    assembler.add(message.chunk.offset, message.chunk.data)
                assembler.finish()
            validate_tensors(path, self.manifest)
        except UpdateRejected as err:
            return pb.UploadUpdateResponse(accepted=False, refusal=err.refusal.to_proto(), reason=err.reason)
        except PayloadRejected as err:
            return pb.UploadUpdateResponse(
                accepted=False, refusal=Refusal.CORRUPT_PAYLOAD.to_proto(), reason=err.reason
            )
        return pb.UploadUpdateResponse(accepted=True)


@pytest.fixture
def model() -> bytes:
    gen = torch.Generator().manual_seed(1)
    state = {  # ~3 MiB: several chunks each way
        "expert.weight": torch.randn(512, 1024, generator=gen),
        "expert.bias": torch.randn(1024, generator=gen).to(torch.bfloat16),
        "proj.weight": torch.randn(384, 1024, generator=gen).to(torch.bfloat16),
    }
    return encode_state(state)


@pytest.fixture
def stub(model: bytes, tmp_path: Path) -> Iterator[tuple[pb_grpc.FederationStub, TinyFederation]]:
    servicer = TinyFederation(model, tmp_path)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), options=GRPC_OPTIONS)
    pb_grpc.add_FederationServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=GRPC_OPTIONS)
    try:
        yield pb_grpc.FederationStub(channel), servicer
    finally:
        channel.close()
        server.stop(grace=None)


def download(
    stub: pb_grpc.FederationStub, version: str, assembler: ChunkAssembler | None = None, stop_after=None
):
    """Pull a model (optionally resuming into `assembler`); returns the assembler and the ModelInfo."""
    responses = stub.DownloadModel(
        pb.DownloadModelRequest(
            participant_id="p-1", version=version, offset=assembler.received if assembler else 0
        )
    )
    info = next(responses).info
    if assembler is None:
        assembler = ChunkAssembler(info.size, info.version, MAX_BYTES)
    for count, response in enumerate(responses, start=1):
        assembler.add(response.chunk.offset, response.chunk.data)
        if count == stop_after:
            responses.cancel()
            break
    return assembler, info


def upload(stub: pb_grpc.FederationStub, header: UpdateHeader, payload: bytes) -> pb.UploadUpdateResponse:
    def messages() -> Iterator[pb.UploadUpdateRequest]:
        yield pb.UploadUpdateRequest(header=header.to_proto())
        for offset, piece in iter_chunks(payload, CHUNK):
            yield pb.UploadUpdateRequest(chunk=pb.Chunk(offset=offset, data=bytes(piece)))

    return stub.UploadUpdate(messages())


def header_for(payload: bytes, version: str, **changes) -> UpdateHeader:
    fields = dict(participant_id="p-1", round=1, base_version=version, sample_count=50, size=len(payload))
    fields.update(sha256=sha256_hex(payload), metrics={"policy_loss": 0.5})
    fields.update(changes)
    return UpdateHeader(**fields)


def test_model_goes_down_and_an_update_comes_back_intact(stub, model: bytes, tmp_path: Path):
    client, servicer = stub
    assembler, info = download(client, servicer.version)
    received = assembler.finish()
    assert sha256_hex(received) == info.version == servicer.version
    assert Manifest.of(decode_state(received)) == servicer.manifest

    trained = {name: tensor + 1 for name, tensor in decode_state(received).items()}
    payload = encode_state(trained)
    reply = upload(client, header_for(payload, info.version), payload)
    assert reply.accepted, reply.reason
    assert (tmp_path / "p-1.safetensors").read_bytes() == payload


def test_a_broken_download_resumes_from_its_offset(stub, model: bytes):
    client, servicer = stub
    assembler, _ = download(client, servicer.version, stop_after=1)
    assert 0 < assembler.received < len(model)
    assembler, _ = download(client, servicer.version, assembler)
    assert assembler.finish() == model


def test_uploads_that_do_not_match_are_refused_with_their_reason(stub, model: bytes, tmp_path: Path):
    client, servicer = stub
    state = decode_state(model)
    payload = encode_state(state)

    corrupt = bytearray(payload)
    corrupt[-1] ^= 0xFF
    reply = upload(client, header_for(payload, servicer.version), bytes(corrupt))
    assert not reply.accepted and reply.refusal == pb.REFUSAL_CORRUPT_PAYLOAD
    assert reply.reason.startswith(f"sha256 mismatch: {len(payload)} bytes hash to")

    reply = upload(client, header_for(payload, servicer.version, round=0), payload)
    assert (reply.accepted, reply.refusal, reply.reason) == (
        False,
        pb.REFUSAL_WRONG_ROUND,
        "stale round 0 (current round is 1)",
    )

    state["expert.bias"][3] = float("nan")
    nan_payload = encode_state(state)
    reply = upload(client, header_for(nan_payload, servicer.version), nan_payload)
    assert (reply.refusal, reply.reason) == (
        pb.REFUSAL_BAD_TENSORS,
        "tensor 'expert.bias': 1 non-finite value",
    )
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".part")]
