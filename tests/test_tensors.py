"""Tensors: deterministic safetensors bytes (in memory or written atomically) and the manifest."""

from pathlib import Path

import pytest
import torch

from zk0.payload import PayloadRejected, sha256_hex
from zk0.tensors import Manifest, TensorSpec, decode_state, encode_state, write_state_atomic
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


def test_write_state_atomic_writes_exactly_the_encoded_bytes_and_leaves_no_temp(tmp_path: Path):
    state = sample_state()
    target = tmp_path / "models" / "round-1.safetensors"
    write_state_atomic(target, {"old": torch.zeros(3)})
    write_state_atomic(target, dict(reversed(list(state.items()))))
    assert target.read_bytes() == encode_state(state)
    assert [p.name for p in target.parent.iterdir()] == ["round-1.safetensors"]
