"""Validation: every rule refuses with its own refusal code and a reason that names the problem."""

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from zk0.atomic_files import write_atomic
from zk0.payload import sha256_hex
from zk0.spool import SpoolReader
from zk0.tensors import Manifest, encode_state
from zk0.v1 import federation_pb2 as pb
from zk0.validation import (
    MAX_METRIC_KEY,
    MAX_METRICS,
    Refusal,
    UpdateHeader,
    UpdateRejected,
    validate_metrics,
    validate_tensors,
    validate_update,
)

CURRENT = sha256_hex(b"global model of round 4")
OTHER = sha256_hex(b"global model of round 3")
WEIGHT = "model.action_out_proj.weight"


def good_state() -> dict[str, torch.Tensor]:
    return {
        WEIGHT: torch.zeros(32, 64),
        "model.action_out_proj.bias": torch.zeros(32, dtype=torch.bfloat16),
        "model.counter": torch.zeros(3, dtype=torch.int64),
    }


MANIFEST = Manifest.of(good_state())
PAYLOAD = encode_state(good_state())
HEADER = UpdateHeader(
    participant_id="p-1",
    round=4,
    base_version=CURRENT,
    sample_count=120,
    size=len(PAYLOAD),
    sha256=sha256_hex(PAYLOAD),
    metrics={"policy_loss": 0.25, "steps": 10.0},
)


def check(header: UpdateHeader, max_bytes: int = 1 << 20) -> None:
    validate_update(header, MANIFEST, current_round=4, current_version=CURRENT, max_bytes=max_bytes)


def rejection(header: UpdateHeader, max_bytes: int = 1 << 20) -> UpdateRejected:
    with pytest.raises(UpdateRejected) as err:
        check(header, max_bytes)
    return err.value


def test_a_current_header_passes():
    check(HEADER)


@pytest.mark.parametrize(
    ("changes", "refusal", "reason"),
    [
        ({"round": 3}, Refusal.WRONG_ROUND, "stale round 3 (current round is 4)"),
        ({"round": 5}, Refusal.WRONG_ROUND, "future round 5 (current round is 4)"),
        (
            {"base_version": OTHER},
            Refusal.WRONG_BASE,
            f"base version {OTHER[:12]} != current version {CURRENT[:12]}",
        ),
        ({"base_version": ""}, Refusal.WRONG_BASE, f"base version '' != current version {CURRENT[:12]}"),
        ({"sample_count": 0}, Refusal.BAD_HEADER, "sample count 0 must be > 0"),
        ({"sample_count": -5}, Refusal.BAD_HEADER, "sample count -5 must be > 0"),
        ({"participant_id": ""}, Refusal.BAD_HEADER, "missing participant id"),
        ({"sha256": "abc"}, Refusal.BAD_HEADER, "sha256 'abc' is not 64 lowercase hex digits"),
        (
            {"size": (1 << 20) + 1},
            Refusal.TOO_LARGE,
            f"declared size {(1 << 20) + 1} bytes exceeds the bound of {1 << 20} bytes",
        ),
        (
            {"size": 10},
            Refusal.BAD_HEADER,
            f"declared size 10 bytes is below the manifest's {MANIFEST.num_bytes} tensor bytes",
        ),
    ],
)
def test_each_header_rule_refuses_with_its_reason(changes, refusal, reason):
    err = rejection(replace(HEADER, **changes))
    assert err.refusal is refusal
    assert err.reason == reason


@pytest.mark.parametrize(
    ("metrics", "reason"),
    [
        ({"steps": 10.0}, "update metrics: 'policy_loss' missing"),
        ({"policy_loss": float("nan")}, "update metrics: 'policy_loss' = nan is not a finite number"),
        (
            {"policy_loss": 0.5, "grad_norm": float("-inf")},
            "update metrics: 'grad_norm' = -inf is not a finite number",
        ),
        (
            {"policy_loss": 0.5, "x" * (MAX_METRIC_KEY + 1): 1.0},
            f"update metrics: key {'x' * MAX_METRIC_KEY!r}... must be 1-{MAX_METRIC_KEY} characters",
        ),
        (
            {"policy_loss": 0.5, **{f"m{i}": 1.0 for i in range(MAX_METRICS)}},
            f"update metrics: {MAX_METRICS + 1} entries, more than {MAX_METRICS}",
        ),
    ],
    ids=["missing", "nan", "inf", "long-key", "too-many"],
)
def test_update_metrics_are_refused_as_a_bad_header(metrics, reason):
    err = rejection(replace(HEADER, metrics=metrics))
    assert err.refusal is Refusal.BAD_HEADER
    assert err.reason == reason


def test_metrics_at_their_bounds_pass():
    metrics = {"policy_loss": 1e300, **{"k" * MAX_METRIC_KEY + str(i): -1.0 for i in range(MAX_METRICS - 1)}}
    validate_metrics({key[-MAX_METRIC_KEY:]: v for key, v in metrics.items()}, ["policy_loss"])


def test_a_sample_count_above_what_a_round_trains_is_refused():
    bound = dict(current_round=4, current_version=CURRENT, max_bytes=1 << 20)
    validate_update(replace(HEADER, sample_count=120), MANIFEST, max_samples=120, **bound)
    with pytest.raises(UpdateRejected) as err:
        validate_update(replace(HEADER, sample_count=10**18), MANIFEST, max_samples=120, **bound)
    assert err.value.refusal is Refusal.BAD_HEADER
    assert err.value.reason == (
        f"sample count {10**18} exceeds the round's 120 (train.local_steps x train.batch_size)"
    )


def test_header_round_trips_through_its_proto_message():
    wire = pb.UpdateHeader.FromString(HEADER.to_proto().SerializeToString())
    assert UpdateHeader.from_proto(wire) == HEADER


def test_every_refusal_has_its_wire_value_and_back():
    assert {r.to_proto() for r in Refusal} == set(pb.Refusal.values()) - {pb.REFUSAL_UNSPECIFIED}
    assert Refusal.CORRUPT_PAYLOAD.to_proto() == pb.REFUSAL_CORRUPT_PAYLOAD


def tensor_rejection(state) -> UpdateRejected:
    with pytest.raises(UpdateRejected) as err:
        validate_tensors(state, MANIFEST)
    assert err.value.refusal is Refusal.BAD_TENSORS
    return err.value


def test_matching_tensors_pass_in_memory_and_from_a_spooled_file(tmp_path: Path):
    validate_tensors(good_state(), MANIFEST)
    path = tmp_path / "update.safetensors"
    write_atomic(path, PAYLOAD)
    with SpoolReader(path) as reader:
        validate_tensors(reader, MANIFEST)


def test_missing_tensor_is_named():
    state = good_state()
    del state["model.counter"]
    assert tensor_rejection(state).reason == "tensor 'model.counter': missing"


def test_extra_tensor_is_named():
    state = {**good_state(), "model.vlm.embed": torch.zeros(2)}
    assert tensor_rejection(state).reason == "tensor 'model.vlm.embed': not in the manifest"


def test_dtype_mismatch_is_named():
    state = {**good_state(), "model.action_out_proj.bias": torch.zeros(32, dtype=torch.float16)}
    assert (
        tensor_rejection(state).reason
        == "tensor 'model.action_out_proj.bias': dtype float16 != manifest bfloat16"
    )


def test_shape_mismatch_is_named():
    state = {**good_state(), WEIGHT: torch.zeros(32, 48)}
    assert tensor_rejection(state).reason == f"tensor '{WEIGHT}': shape (32, 48) != manifest (32, 64)"


def test_non_finite_values_are_counted_per_tensor():
    weight = torch.zeros(32, 64)
    weight[0, 0], weight[1, 1], weight[2, 2] = float("nan"), float("inf"), float("-inf")
    bias = torch.zeros(32, dtype=torch.bfloat16)
    bias[7] = float("nan")
    state = {**good_state(), WEIGHT: weight, "model.action_out_proj.bias": bias}
    assert tensor_rejection(state).reason == (
        f"tensor 'model.action_out_proj.bias': 1 non-finite value; tensor '{WEIGHT}': 3 non-finite values"
    )


def test_non_finite_values_are_found_in_a_spooled_file(tmp_path: Path):
    weight = torch.zeros(32, 64)
    weight[5] = float("nan")
    path = tmp_path / "update.safetensors"
    write_atomic(path, encode_state({**good_state(), WEIGHT: weight}))
    with SpoolReader(path) as reader:
        assert tensor_rejection(reader).reason == f"tensor '{WEIGHT}': 64 non-finite values"


def test_a_spooled_file_with_the_wrong_shape_is_refused_from_its_header(tmp_path: Path):
    path = tmp_path / "update.safetensors"
    write_atomic(path, encode_state({**good_state(), WEIGHT: torch.zeros(32, 48)}))
    with SpoolReader(path) as reader:
        assert tensor_rejection(reader).reason == f"tensor '{WEIGHT}': shape (32, 48) != manifest (32, 64)"


def test_many_problems_are_listed_up_to_a_bound():
    state = {f"extra.{i:02d}": torch.zeros(1) for i in range(10)}
    reason = tensor_rejection(state).reason
    assert reason.startswith(
        "tensor 'model.action_out_proj.bias': missing; tensor 'model.action_out_proj.weight'"
    )
    assert reason.endswith("; and 5 more")
    assert reason.count("tensor '") == 8


def test_a_spooled_path_is_validated_and_garbage_is_refused_as_bad_tensors(tmp_path: Path):
    path = tmp_path / "update.safetensors"
    write_atomic(path, PAYLOAD)
    validate_tensors(path, MANIFEST)
    path.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00garbage!")
    reason = tensor_rejection(path).reason
    assert reason.startswith("not a valid safetensors payload")
