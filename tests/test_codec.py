"""Codec: deterministic safetensors bytes, the manifest, chunking, and receivers that fail closed."""

import hashlib
import os
from pathlib import Path

import pytest
import torch

from zk0.codec import (
    ChunkAssembler,
    FileAssembler,
    Manifest,
    PayloadRejected,
    SpoolReader,
    TensorSpec,
    decode_state,
    encode_state,
    iter_chunks,
    sha256_hex,
    write_atomic,
)
from zk0.v1 import federation_pb2 as pb


def sample_state() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return {
        "model.action_out_proj.weight": torch.randn(32, 64, generator=gen),
        "model.action_in_proj.bias": torch.randn(64, generator=gen).to(torch.bfloat16),
        "model.expert.layer.weight": torch.randn(16, 8, generator=gen).to(torch.float16),
        "model.step_counter": torch.arange(5, dtype=torch.int64),
        "model.scalar": torch.tensor(3.5),
    }


def assert_same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert list(a) == sorted(b) == sorted(a)
    for name in a:
        assert a[name].dtype == b[name].dtype, name
        assert a[name].shape == b[name].shape, name
        assert torch.equal(a[name], b[name]), name


def test_round_trip_keeps_every_dtype_and_value():
    state = sample_state()
    decoded = decode_state(encode_state(state))
    assert_same_state(decoded, state)
    assert {str(t.dtype) for t in decoded.values()} >= {
        "torch.float32",
        "torch.bfloat16",
        "torch.float16",
        "torch.int64",
    }


def test_encoding_is_deterministic_whatever_the_insertion_order_or_layout():
    state = sample_state()
    reordered = dict(reversed(list(state.items())))
    cloned = {name: tensor.clone() for name, tensor in state.items()}
    first = encode_state(state)
    assert encode_state(reordered) == first
    assert encode_state(cloned) == first
    assert sha256_hex(encode_state(state)) == sha256_hex(first)
    transposed = {
        **state,
        "model.action_out_proj.weight": state["model.action_out_proj.weight"].t().contiguous().t(),
    }
    assert not transposed["model.action_out_proj.weight"].is_contiguous()
    assert encode_state(transposed) == first


def test_tensors_sharing_storage_travel_as_separate_values():
    base = torch.randn(4, 4)
    state = {"tied.a": base, "tied.b": base, "view": base[:2]}
    decoded = decode_state(encode_state(state))
    assert torch.equal(decoded["tied.a"], base)
    assert torch.equal(decoded["tied.b"], base)
    assert torch.equal(decoded["view"], base[:2])


def test_decode_refuses_bytes_that_are_not_safetensors():
    with pytest.raises(PayloadRejected, match="not a valid safetensors payload"):
        decode_state(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}     ")


def test_sha256_hex_matches_hashlib():
    assert sha256_hex(b"abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert sha256_hex(memoryview(b"abc")) == hashlib.sha256(b"abc").hexdigest()


def test_manifest_describes_state_sorted_and_sizes_add_up():
    state = sample_state()
    manifest = Manifest.of(state)
    assert manifest.names == tuple(sorted(state))
    assert manifest.by_name["model.action_in_proj.bias"] == TensorSpec(
        "model.action_in_proj.bias", "bfloat16", (64,)
    )
    assert manifest.by_name["model.scalar"].shape == ()
    assert manifest.num_bytes == sum(t.numel() * t.element_size() for t in state.values())
    encoded = encode_state(state)
    header_len = int.from_bytes(encoded[:8], "little")
    assert len(encoded) == 8 + header_len + manifest.num_bytes
    assert Manifest.of(dict(reversed(list(state.items())))) == manifest


def test_manifest_round_trips_through_its_proto_message():
    manifest = Manifest.of(sample_state())
    wire = pb.TensorManifest.FromString(manifest.to_proto().SerializeToString())
    assert Manifest.from_proto(wire) == manifest


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (pb.TensorSpec(name="w", dtype="float33", shape=[2]), "manifest tensor 'w': unknown dtype 'float33'"),
        (pb.TensorSpec(name="w", dtype="float32", shape=[2, -1]), "manifest tensor 'w': negative dimension"),
        (pb.TensorSpec(name="", dtype="float32", shape=[2]), "empty name"),
    ],
)
def test_manifest_from_proto_refuses_impossible_tensors(spec, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        Manifest.from_proto(pb.TensorManifest(tensors=[spec]))


def test_manifest_refuses_duplicate_names():
    with pytest.raises(ValueError, match="duplicate tensor names"):
        Manifest((TensorSpec("a", "float32", (1,)), TensorSpec("a", "float32", (2,))))


def test_iter_chunks_covers_the_payload_in_order_without_gaps():
    data = bytes(range(256)) * 41  # 10496 bytes: last chunk is short
    chunks = list(iter_chunks(data, 1000))
    assert [offset for offset, _ in chunks] == list(range(0, len(data), 1000))
    assert all(len(piece) == 1000 for _, piece in chunks[:-1]) and len(chunks[-1][1]) == 496
    assert b"".join(bytes(piece) for _, piece in chunks) == data
    resumed = list(iter_chunks(data, 1000, start=2500))
    assert resumed[0][0] == 2500 and b"".join(bytes(p) for _, p in resumed) == data[2500:]
    assert list(iter_chunks(b"", 1000)) == []
    with pytest.raises(ValueError, match="chunk_bytes must be > 0"):
        list(iter_chunks(data, 0))
    with pytest.raises(ValueError, match="start offset"):
        list(iter_chunks(data, 10, start=len(data) + 1))


PAYLOAD = os.urandom(10_000)
DIGEST = sha256_hex(PAYLOAD)


def feed(assembler, data: bytes, chunk_bytes: int = 3000) -> None:
    for offset, piece in iter_chunks(data, chunk_bytes):
        assembler.add(offset, piece)


def test_assembler_returns_the_payload_when_size_and_hash_match():
    assembler = ChunkAssembler(len(PAYLOAD), DIGEST, max_bytes=1 << 20)
    feed(assembler, PAYLOAD)
    assert assembler.finish() == PAYLOAD


def test_assembler_resumes_from_received_after_a_broken_stream():
    assembler = ChunkAssembler(len(PAYLOAD), DIGEST, max_bytes=1 << 20)
    for offset, piece in list(iter_chunks(PAYLOAD, 3000))[:2]:
        assembler.add(offset, piece)
    assert assembler.received == 6000
    for offset, piece in iter_chunks(PAYLOAD, 1500, start=assembler.received):
        assembler.add(offset, piece)
    assert assembler.finish() == PAYLOAD


def test_assembler_refuses_a_bad_hash():
    wrong = sha256_hex(b"something else")
    assembler = ChunkAssembler(len(PAYLOAD), wrong, max_bytes=1 << 20)
    feed(assembler, PAYLOAD)
    with pytest.raises(PayloadRejected) as err:
        assembler.finish()
    assert err.value.reason == f"sha256 mismatch: 10000 bytes hash to {DIGEST}, declared {wrong}"


def test_assembler_refuses_a_short_payload():
    assembler = ChunkAssembler(len(PAYLOAD), DIGEST, max_bytes=1 << 20)
    feed(assembler, PAYLOAD[:9000])
    with pytest.raises(PayloadRejected) as err:
        assembler.finish()
    assert err.value.reason == "payload ended at 9000 bytes, declared size 10000"


def test_assembler_refuses_an_overflow_at_the_chunk_that_overflows():
    assembler = ChunkAssembler(9000, DIGEST, max_bytes=1 << 20)
    assembler.add(0, PAYLOAD[:6000])
    with pytest.raises(PayloadRejected) as err:
        assembler.add(6000, PAYLOAD[6000:])
    assert err.value.reason == "chunk at offset 6000 with 4000 bytes overflows the declared size 9000"
    with pytest.raises(PayloadRejected, match="overflows"):
        assembler.finish()


def test_assembler_refuses_a_declared_size_over_the_bound_before_any_byte():
    with pytest.raises(PayloadRejected) as err:
        ChunkAssembler(len(PAYLOAD), DIGEST, max_bytes=4096)
    assert err.value.reason == "declared size 10000 bytes exceeds the bound of 4096 bytes"


def test_assembler_refuses_a_wrong_offset():
    assembler = ChunkAssembler(len(PAYLOAD), DIGEST, max_bytes=1 << 20)
    assembler.add(0, PAYLOAD[:3000])
    with pytest.raises(PayloadRejected) as err:
        assembler.add(4000, PAYLOAD[4000:6000])
    assert err.value.reason == "chunk at offset 4000, expected offset 3000"


def test_assembler_refuses_empty_chunks_and_malformed_hashes():
    assembler = ChunkAssembler(len(PAYLOAD), DIGEST, max_bytes=1 << 20)
    with pytest.raises(PayloadRejected, match="empty chunk at offset 0"):
        assembler.add(0, b"")
    with pytest.raises(PayloadRejected, match="is not 64 lowercase hex digits"):
        ChunkAssembler(10, "ABC", max_bytes=100)


def test_file_assembler_moves_only_verified_bytes_into_place(tmp_path: Path):
    target = tmp_path / "spool" / "update.safetensors"
    with FileAssembler(target, len(PAYLOAD), DIGEST, max_bytes=1 << 20) as assembler:
        feed(assembler, PAYLOAD)
        assert not target.exists()
        assert assembler.finish() == target
    assert target.read_bytes() == PAYLOAD
    assert sorted(p.name for p in target.parent.iterdir()) == ["update.safetensors"]


def test_file_assembler_leaves_nothing_behind_when_refused_or_abandoned(tmp_path: Path):
    target = tmp_path / "update.safetensors"
    with FileAssembler(target, len(PAYLOAD), sha256_hex(b"x"), max_bytes=1 << 20) as assembler:
        feed(assembler, PAYLOAD)
        with pytest.raises(PayloadRejected, match="sha256 mismatch"):
            assembler.finish()
    assert list(tmp_path.iterdir()) == []
    with FileAssembler(target, len(PAYLOAD), DIGEST, max_bytes=1 << 20) as assembler:
        assembler.add(0, PAYLOAD[:100])
    assert list(tmp_path.iterdir()) == []


def test_write_atomic_replaces_the_whole_file_and_leaves_no_temp(tmp_path: Path):
    target = tmp_path / "models" / "round-1.safetensors"
    write_atomic(target, b"old")
    write_atomic(target, PAYLOAD)
    assert target.read_bytes() == PAYLOAD
    assert [p.name for p in target.parent.iterdir()] == ["round-1.safetensors"]


def test_spool_reader_reads_metadata_without_loading_and_one_tensor_per_lookup(tmp_path: Path):
    state = sample_state()
    path = tmp_path / "update.safetensors"
    write_atomic(path, encode_state(state))
    with SpoolReader(path) as reader:
        assert reader.manifest() == Manifest.of(state)
        assert Manifest.of(reader) == Manifest.of(state)
        assert list(reader) == sorted(state) and len(reader) == len(state)
        assert "model.scalar" in reader and "nope" not in reader
        assert torch.equal(reader["model.action_in_proj.bias"], state["model.action_in_proj.bias"])
        with pytest.raises(KeyError):
            reader["nope"]


def test_spool_reader_refuses_a_file_that_is_not_safetensors(tmp_path: Path):
    path = tmp_path / "garbage.safetensors"
    path.write_bytes(b"\xff" * 64)
    with pytest.raises(PayloadRejected, match="not a valid safetensors payload"):
        SpoolReader(path)
