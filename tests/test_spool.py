"""SpoolReader: a safetensors file on disk as a mapping; metadata without loading, one tensor a lookup."""

from pathlib import Path

import pytest
import torch
from test_tensors import sample_state

from zk0.atomic_files import write_atomic
from zk0.payload import PayloadRejected
from zk0.spool import SpoolReader
from zk0.tensors import Manifest, encode_state


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
