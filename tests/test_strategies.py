"""The strategy seam and each strategy's arithmetic, on real spooled safetensors files (no gRPC): the
registry matches the config, FedAvg/FedProx are the accumulator's bytes, the robust rules stay with the
honest updates whatever one hostile update does, and FedAdam/FedYogi match a direct implementation and
resume from their saved state."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from coordinator import strategies
from coordinator.aggregation import FedAvgAccumulator
from coordinator.strategies import RoundUpdates
from coordinator.strategies.norm_bounded import clip_scales
from coordinator.strategies.trimmed_mean import trimmed_count
from coordinator.update_bounds import update_distance
from zk0.atomic_files import write_atomic
from zk0.config import STRATEGIES, ConfigError, load_config
from zk0.tensors import Manifest, encode_state

BASE = {"w": torch.linspace(-1, 1, 60).reshape(6, 10), "b": torch.zeros(10, dtype=torch.bfloat16)}
MANIFEST = Manifest.of(BASE)


def make(strategy: str, *overrides: str):
    return strategies.make(load_config(None, [f"federation.strategy='{strategy}'", *overrides]))


def honest(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "w": BASE["w"] + 0.01 * torch.randn(6, 10, generator=g),
        "b": (BASE["b"].float() + 0.01 * torch.randn(10, generator=g)).to(torch.bfloat16),
    }


def hostile(updates: dict[str, dict[str, torch.Tensor]], scale: float) -> dict[str, torch.Tensor]:
    """A valid-looking update: the honest mean's delta, sign-flipped and scaled."""
    out = {}
    for name, base in BASE.items():
        delta = torch.stack([u[name].float() for u in updates.values()]).mean(0) - base.float()
        out[name] = (base.float() - scale * delta).to(base.dtype)
    return out


def round_of(tmp_path: Path, updates: dict, weights: dict | None = None, base=BASE) -> RoundUpdates:
    paths = {}
    for name, update in {**updates, "_base": base}.items():
        paths[name] = tmp_path / f"{name}.safetensors"
        write_atomic(paths[name], encode_state(update))
    weights = weights or {n: 10.0 for n in updates}
    distances = {n: update_distance(u, base) for n, u in updates.items()}
    spooled = {n: (paths[n], weights[n]) for n in updates}
    return RoundUpdates(1, Manifest.of(base), paths["_base"], spooled, distances)


def honest_mean(updates: dict) -> dict[str, torch.Tensor]:
    return {n: torch.stack([u[n].float() for u in updates.values()]).mean(0) for n in BASE}


def distance(a: dict, b: dict) -> float:
    return sum(float((a[n].float() - b[n].float()).square().sum()) for n in a) ** 0.5


def test_the_registry_and_the_config_name_the_same_strategies():
    assert sorted(strategies.available()) == sorted(STRATEGIES)
    for name in STRATEGIES:
        assert make(name).name == name


def test_only_fedprox_sends_mu():
    for name in STRATEGIES:
        plan = make(name, "federation.mu=0.05").plan([])
        assert plan.mu == (0.05 if name == "fedprox" else 0.0), name


def test_fedavg_and_fedprox_are_the_accumulators_bytes(tmp_path):
    updates = {f"p{i}": honest(i) for i in range(3)}
    round_updates = round_of(tmp_path, updates, {"p0": 8.0, "p1": 3.0, "p2": 5.0})
    plain = FedAvgAccumulator(MANIFEST)
    for name in sorted(updates):
        plain.add(*round_updates.updates[name])
    expected = plain.result()
    for name in ("fedavg", "fedprox"):
        result = make(name).aggregate(round_updates).state
        assert all(torch.equal(result[k], expected[k]) for k in expected), name


def test_server_lr_steps_past_any_rules_result(tmp_path):
    updates = {f"p{i}": honest(i) for i in range(3)}
    round_updates = round_of(tmp_path, updates)
    for name in ("fedavg", "median", "trimmed_mean", "norm_bounded"):
        once = make(name, "strategy.clip_norm=100").aggregate(round_updates).state
        twice = make(name, "strategy.clip_norm=100", "federation.server_lr=2").aggregate(round_updates).state
        expected = BASE["w"] + 2 * (once["w"] - BASE["w"])
        assert torch.allclose(twice["w"], expected, atol=1e-6), name


@pytest.mark.parametrize("count", [3, 4, 5])
def test_median_is_the_coordinatewise_median(tmp_path, count):
    updates = {f"p{i}": honest(i) for i in range(count)}
    result = make("median").aggregate(round_of(tmp_path, updates)).state
    stacked = torch.stack([u["w"] for u in updates.values()])
    expected = stacked.quantile(0.5, dim=0)  # the mean of the two middle values for an even count
    assert torch.allclose(result["w"], expected, atol=1e-7)
    assert result["b"].dtype == torch.bfloat16


def test_trimmed_mean_cuts_the_fraction_from_each_end(tmp_path):
    assert [trimmed_count(p, 0.25) for p in (2, 3, 4, 8, 9)] == [0, 0, 1, 2, 2]
    assert trimmed_count(3, 0.49) == 1 and trimmed_count(2, 0.49) == 0
    updates = {f"p{i}": honest(i) for i in range(4)}
    result = make("trimmed_mean").aggregate(round_of(tmp_path, updates)).state
    ordered = torch.stack([u["w"] for u in updates.values()]).sort(0).values
    assert torch.allclose(result["w"], ordered[1:3].mean(0), atol=1e-7)


def test_norm_bounded_scales_each_delta_to_the_clip_norm(tmp_path):
    assert clip_scales({"a": 0.5, "b": 4.0}, 2.0) == {"a": 1.0, "b": 0.5}
    updates = {f"p{i}": honest(i) for i in range(3)}
    updates["far"] = hostile(updates, 50.0)
    weights = {"p0": 4.0, "p1": 4.0, "p2": 4.0, "far": 12.0}
    round_updates = round_of(tmp_path, updates, weights)
    clip = 0.05
    result = make("norm_bounded", f"strategy.clip_norm={clip}").aggregate(round_updates)
    expected = torch.zeros_like(BASE["w"])
    for name, update in updates.items():
        scale = min(1.0, clip / round_updates.distances[name])
        expected += weights[name] * scale * (update["w"] - BASE["w"])
    expected = BASE["w"] + expected / sum(weights.values())
    assert torch.allclose(result.state["w"], expected, atol=1e-6)
    assert set(result.stats["clipped"]) >= {"far"}
    unclipped = make("norm_bounded", "strategy.clip_norm=1e6").aggregate(round_updates).state
    assert torch.allclose(unclipped["w"], make("fedavg").aggregate(round_updates).state["w"], atol=1e-6)


@pytest.mark.parametrize("scale", [3.0, 30.0, 3000.0])
def test_one_hostile_update_of_four_moves_fedavg_far_and_the_robust_rules_little(tmp_path, scale):
    updates = {f"p{i}": honest(i) for i in range(3)}
    target = honest_mean(updates)
    spread = max(distance(u, target) for u in updates.values())  # how far an honest update lies
    updates["evil"] = hostile(updates, scale)
    round_updates = round_of(tmp_path, updates)
    off = {
        name: distance(make(name, "strategy.clip_norm=0.1").aggregate(round_updates).state, target)
        for name in ("fedavg", "median", "trimmed_mean", "norm_bounded")
    }
    assert off["fedavg"] > scale / 8 * distance(BASE, target)  # pulled along the hostile delta
    for name in ("median", "trimmed_mean"):
        assert off[name] <= spread, (name, off)  # within the honest updates' own spread, at any scale
    assert off["norm_bounded"] <= distance(BASE, target) + 0.1 / 4, off  # moved by at most 1/4 x clip_norm


def adam_reference(base, means, yogi: bool, eta=0.01, b1=0.9, b2=0.99, tau=1e-3):
    """FedAdam/FedYogi as written in Reddi et al. (2021), with bias correction, one tensor."""
    x, m, v = base.clone(), torch.zeros_like(base), torch.zeros_like(base)
    for t, mean in enumerate(means, start=1):
        delta = mean - x
        m = b1 * m + (1 - b1) * delta
        v = v - (1 - b2) * delta**2 * torch.sign(v - delta**2) if yogi else b2 * v + (1 - b2) * delta**2
        x = x + eta * (1 - b2**t) ** 0.5 / (1 - b1**t) * m / (v.sqrt() + tau)
    return x


@pytest.mark.parametrize("name", ["fedadam", "fedyogi"])
def test_server_optimizers_match_the_paper_and_resume_from_their_saved_state(tmp_path, name):
    base, means, continued = dict(BASE), [], None
    for round_idx in range(3):
        updates = {f"p{i}": honest(10 * round_idx + i) for i in range(2)}
        updates = {n: {k: u[k] - BASE[k] + base[k] for k in u} for n, u in updates.items()}
        means.append(honest_mean(updates)["w"])
        strategy = make(name)
        strategy.load_server_state(continued)  # a fresh strategy each round: what a restart does
        round_dir = tmp_path / f"r{round_idx}"
        round_dir.mkdir()
        result = strategy.aggregate(round_of(round_dir, updates, base=base))
        continued = {k: v.clone() for k, v in result.server_state.items()}
        base = result.state
    expected = adam_reference(BASE["w"], means, yogi=name == "fedyogi")
    assert torch.allclose(base["w"], expected, atol=1e-6)
    assert int(continued["step"]) == 3


def test_strategy_options_are_validated_with_the_key_named():
    for override, key in (
        ("strategy.trim_fraction=0.5", "strategy.trim_fraction"),
        ("strategy.clip_norm=0", "strategy.clip_norm"),
        ("strategy.beta2=1", "strategy.beta2"),
        ("strategy.tau=-1", "strategy.tau"),
    ):
        with pytest.raises(ConfigError, match=key):
            load_config(None, [override])
    with pytest.raises(ConfigError, match="federation.server_lr.*strategy.eta"):
        load_config(None, ["federation.strategy='fedadam'", "federation.server_lr=2"])
