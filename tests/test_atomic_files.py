"""Atomic files: a path holds its old content or all of the new, and no temp file outlives a write."""

import os
from pathlib import Path

import pytest

from zk0.atomic_files import write_atomic, write_atomic_with

PAYLOAD = os.urandom(10_000)


def test_write_atomic_replaces_the_whole_file_and_leaves_no_temp(tmp_path: Path):
    target = tmp_path / "models" / "round-1.safetensors"
    write_atomic(target, b"old")
    write_atomic(target, PAYLOAD)
    assert target.read_bytes() == PAYLOAD
    assert [p.name for p in target.parent.iterdir()] == ["round-1.safetensors"]


def test_write_atomic_with_keeps_the_old_content_when_the_writer_fails(tmp_path: Path):
    target = tmp_path / "model.safetensors"
    write_atomic(target, b"old")

    def half_then_fail(tmp: Path) -> None:
        tmp.write_bytes(PAYLOAD[:100])
        raise OSError("disk gone")

    with pytest.raises(OSError, match="disk gone"):
        write_atomic_with(target, half_then_fail)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]
    write_atomic_with(target, lambda tmp: tmp.write_bytes(PAYLOAD))
    assert target.read_bytes() == PAYLOAD
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]
