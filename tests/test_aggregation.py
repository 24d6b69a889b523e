"""Streaming FedAvg equals the explicit sample-weighted mean, in each tensor's own dtype."""

from pathlib import Path

import pytest
import torch

from coordinator.aggregation import FedAvgAccumulator
from zk0.atomic_files import write_atomic
from zk0.tensors import Manifest, encode_state


def make_update(seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {
        "expert.weight": torch.randn(48, 64, generator=gen),
        "expert.bias": torch.randn(64, generator=gen).to(torch.bfloat16),
        "proj.weight": (torch.randn(16, 16, generator=gen) * 10).to(torch.bfloat16),
        "steps": torch.randint(0, 100, (4,), generator=gen, dtype=torch.int64),
    }


UPDATES = [make_update(seed) for seed in range(4)]
WEIGHTS = [120.0, 30.0, 75.0, 1.0]
MANIFEST = Manifest.of(UPDATES[0])


def explicit_weighted_mean(updates, weights) -> dict[str, torch.Tensor]:
    total = sum(weights)
    mean = {}
    for name, first in updates[0].items():
        acc = sum(w * u[name].double() for u, w in zip(updates, weights, strict=True)) / total
        mean[name] = (acc if first.is_floating_point() else acc.round()).to(first.dtype)
    return mean


def assert_matches_reference(result, reference):
    assert sorted(result) == sorted(reference)
    for name, expected in reference.items():
        assert result[name].dtype == expected.dtype == UPDATES[0][name].dtype, name
        assert result[name].shape == expected.shape, name
        # fp32 accumulation vs the fp64 reference: within one rounding step of the target dtype.
        torch.testing.assert_close(result[name], expected, msg=name)


def test_fedavg_from_spooled_files_equals_the_weighted_mean(tmp_path: Path):
    accumulator = FedAvgAccumulator(MANIFEST)
    for index, (update, weight) in enumerate(zip(UPDATES, WEIGHTS, strict=True)):
        path = tmp_path / f"update-{index}.safetensors"
        write_atomic(path, encode_state(update))
        accumulator.add(path, weight)
    assert accumulator.count == 4 and accumulator.total_weight == sum(WEIGHTS)
    assert_matches_reference(accumulator.result(), explicit_weighted_mean(UPDATES, WEIGHTS))


def test_fedavg_from_states_equals_the_weighted_mean_in_any_order():
    forward, backward = FedAvgAccumulator(MANIFEST), FedAvgAccumulator(MANIFEST)
    for update, weight in zip(UPDATES, WEIGHTS, strict=True):
        forward.add(update, weight)
    for update, weight in reversed(list(zip(UPDATES, WEIGHTS, strict=True))):
        backward.add(update, weight)
    reference = explicit_weighted_mean(UPDATES, WEIGHTS)
    assert_matches_reference(forward.result(), reference)
    assert_matches_reference(backward.result(), reference)


def test_one_update_with_unit_weight_comes_back_unchanged():
    accumulator = FedAvgAccumulator(MANIFEST)
    accumulator.add(UPDATES[0], 1.0)
    result = accumulator.result()
    for name, tensor in UPDATES[0].items():
        assert torch.equal(result[name], tensor), name


def test_result_without_updates_is_an_error():
    with pytest.raises(RuntimeError, match="no updates to aggregate"):
        FedAvgAccumulator(MANIFEST).result()


@pytest.mark.parametrize("weight", [0.0, -1.0, float("nan"), float("inf")])
def test_weights_must_be_positive_and_finite(weight):
    with pytest.raises(ValueError, match="weight must be finite and > 0"):
        FedAvgAccumulator(MANIFEST).add(UPDATES[0], weight)


def test_an_update_off_the_manifest_is_refused_before_anything_is_folded():
    accumulator = FedAvgAccumulator(MANIFEST)
    wrong = {**UPDATES[0], "expert.weight": torch.zeros(1, 64)}  # would broadcast silently
    with pytest.raises(ValueError, match="does not match the manifest"):
        accumulator.add(wrong, 5.0)
    accumulator.add(UPDATES[1], 2.0)
    assert accumulator.count == 1
    assert_matches_reference(accumulator.result(), explicit_weighted_mean([UPDATES[1]], [2.0]))


def test_server_lr_extrapolates_along_the_averaged_update():
    from coordinator.aggregation import apply_server_lr

    previous = {"w": torch.tensor([1.0, 2.0]), "b": torch.tensor([0.5], dtype=torch.bfloat16)}
    mean = {"w": torch.tensor([2.0, 1.0]), "b": torch.tensor([1.5], dtype=torch.bfloat16)}
    assert apply_server_lr(previous, mean, 1.0) == mean
    out = apply_server_lr(previous, mean, 2.0)
    assert torch.equal(out["w"], torch.tensor([3.0, 0.0]))
    assert out["b"].dtype == torch.bfloat16 and out["b"].item() == 2.5
    half = apply_server_lr(previous, mean, 0.5)
    assert torch.equal(half["w"], torch.tensor([1.5, 1.5]))
