"""Transfer: chunking, a model served from its file, and receivers that fail closed."""

import hashlib
import os
from pathlib import Path

import pytest

from zk0.payload import PayloadRejected, sha256_hex
from zk0.transfer import ChunkAssembler, FileAssembler, iter_chunks


def test_sha256_hex_matches_hashlib():
    assert sha256_hex(b"abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert sha256_hex(memoryview(b"abc")) == hashlib.sha256(b"abc").hexdigest()


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
