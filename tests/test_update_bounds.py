"""What one update may weigh: its distance from the base model, the bounds on it, and FedAvg that never hands
back a non-finite model (pure decisions; the aggregation reads real spooled files)."""

from pathlib import Path

import pytest
import torch

from coordinator import strategies
from coordinator.aggregation import FedAvgAccumulator
from coordinator.screening import complete_distances, screened_aggregate
from coordinator.strategies import RoundUpdates
from coordinator.update_bounds import (
    absolute_violation,
    farthest,
    median_outliers,
    non_finite_tensors,
    screen,
    update_distance,
)
from zk0.atomic_files import write_atomic
from zk0.config import load_config
from zk0.spool import SpoolReader
from zk0.tensors import Manifest, encode_state

FEDAVG = strategies.make(load_config(None, ["federation.strategy='fedavg'"]))


def state(seed: int, scale: float = 1.0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "w": torch.randn(40, 30, generator=g) * scale,
        "b": (torch.randn(30, generator=g) * scale).to(torch.bfloat16),
        "steps": torch.arange(3),
    }


BASE = state(0)


def test_distance_is_the_l2_norm_of_the_float_tensors_difference_also_from_files(tmp_path: Path):
    update = state(1)
    expected = torch.cat([(update[n].double() - BASE[n].double()).reshape(-1) for n in ("w", "b")]).norm()
    assert update_distance(update, BASE) == pytest.approx(float(expected), rel=1e-12)
    assert update_distance(BASE, BASE) == 0.0
    write_atomic(tmp_path / "u.safetensors", encode_state(update))
    write_atomic(tmp_path / "base.safetensors", encode_state(BASE))
    with SpoolReader(tmp_path / "u.safetensors") as u, SpoolReader(tmp_path / "base.safetensors") as b:
        assert update_distance(u, b) == update_distance(update, BASE)


def test_distance_of_values_near_the_fp32_limit_is_finite_in_fp64():
    huge = {"w": torch.full((40, 30), 3e38), "b": BASE["b"], "steps": BASE["steps"]}
    distance = update_distance(huge, BASE)
    assert 3e38 * 30 < distance < float("inf")


def test_absolute_bound():
    assert absolute_violation(10.0, 10.0) is None  # at the bound is allowed
    assert absolute_violation(1e9, 0.0) is None  # 0 is off
    assert absolute_violation(10.5, 10.0) == (
        "distance 10.5 from the base model exceeds federation.max_update_norm=10"
    )
    assert absolute_violation(float("nan"), 10.0) is not None
    assert absolute_violation(float("inf"), 10.0) is not None


def test_median_rule_applies_from_three_updates_and_spares_the_bound_itself():
    assert median_outliers({"a": 1.0, "b": 1000.0}, 10.0) == {}
    assert median_outliers({"a": 1.0, "b": 2.0, "c": 1000.0}, 0.0) == {}
    assert median_outliers({"a": 1.0, "b": 2.0, "c": 20.0}, 10.0) == {}  # exactly 10 x the median
    assert median_outliers({"a": 0.0, "b": 0.0, "c": 1.0}, 10.0) == {}  # a median of 0 scales nothing
    dropped = median_outliers({"a": 1.0, "b": 2.0, "c": 20.5, "d": 1.5}, 10.0)
    assert list(dropped) == ["c"]
    assert dropped["c"] == (
        "distance 20.5 from the base model exceeds federation.update_norm_median_factor=10 x the round's "
        "median 1.75"
    )


def test_screen_applies_the_absolute_bound_before_the_median():
    distances = {"a": 1.0, "b": 1.2, "c": 50.0, "d": 1e9}
    dropped = screen(distances, max_norm=1e6, factor=10.0)
    assert set(dropped) == {"c", "d"}
    assert "max_update_norm" in dropped["d"] and "median 1.2" in dropped["c"]
    assert screen(distances, max_norm=0.0, factor=0.0) == {}


def test_farthest_and_non_finite():
    assert farthest({"b": 2.0, "a": 2.0, "c": 1.0}) == "a"  # ties: the first name, deterministically
    assert farthest({"a": float("inf"), "b": 1.0}) == "a"
    broken = {**BASE, "b": BASE["b"].clone()}
    broken["b"][3] = float("inf")
    assert non_finite_tensors(BASE) == []
    assert non_finite_tensors(broken) == ["b"]


def spool(tmp_path: Path, updates: dict[str, dict]) -> dict[str, Path]:
    paths = {}
    for name, update in updates.items():
        paths[name] = tmp_path / f"{name}.safetensors"
        write_atomic(paths[name], encode_state(update))
    return paths


def test_screened_fedavg_without_anything_to_drop_is_exactly_one_fedavg_pass(tmp_path: Path):
    updates = {name: state(seed) for name, seed in (("p", 1), ("q", 2), ("r", 3))}
    paths = spool(tmp_path, {**updates, "base": BASE})
    weights = {"p": 8.0, "q": 3.0, "r": 5.0}
    plain = FedAvgAccumulator(Manifest.of(BASE))
    for name in sorted(updates):
        plain.add(paths[name], weights[name])
    expected = plain.result()
    distances: dict[str, float] = {}
    spooled = {name: (paths[name], weights[name]) for name in updates}
    complete_distances(spooled, distances, paths["base"])
    assert set(distances) == set(updates)  # computed for the updates that came without one
    result, dropped = screened_aggregate(
        FEDAVG,
        RoundUpdates(1, Manifest.of(BASE), paths["base"], spooled, distances),
        bounds=dict(max_norm=1e4, factor=10.0),
        min_updates=2,
    )
    assert dropped == {}
    for name, tensor in expected.items():
        assert torch.equal(result.state[name], tensor), name


def test_screened_fedavg_drops_the_farthest_until_the_mean_is_finite(tmp_path: Path):
    huge = {**state(9), "w": torch.full((40, 30), 3e38)}
    updates = {"p": state(1), "q": state(2), "huge": huge, "huger": {**huge, "w": huge["w"] * 1.1}}
    paths = spool(tmp_path, {**updates, "base": BASE})
    distances = {name: update_distance(u, BASE) for name, u in updates.items()}
    spooled = {n: (paths[n], 8.0) for n in updates}
    round_updates = RoundUpdates(1, Manifest.of(BASE), paths["base"], spooled, distances)
    bounds = dict(max_norm=0.0, factor=0.0)
    result, dropped = screened_aggregate(FEDAVG, round_updates, bounds=bounds, min_updates=1)
    assert list(dropped) == ["huger", "huge"]
    assert "not finite (w)" in dropped["huge"]
    assert non_finite_tensors(result.state) == []
    result, dropped = screened_aggregate(FEDAVG, round_updates, bounds=bounds, min_updates=3)
    assert result is None and set(dropped) == {"huge", "huger"}
