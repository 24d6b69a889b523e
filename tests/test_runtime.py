"""One runtime builder for the participant, the centralized baseline and the evaluation policy: whatever
sources and statistics each passes, they start from the same seeded initial model and split alike."""

from __future__ import annotations

from pathlib import Path

import torch

from zk0.config import load_config
from zk0.data import open_source
from zk0.evaluation import evaluation_setup
from zk0.policy import trainable_state
from zk0.training.runtime import build_runtime

CONFIGS = Path(__file__).parent.parent / "configs"


def test_every_consumer_starts_from_the_same_model_and_splits_the_same_episodes(demo_root):
    config = load_config(
        CONFIGS / "demo.toml", [f'demo.root="{demo_root}"', "demo.episodes=3", "demo.frames_per_episode=30"]
    )
    sources = [open_source(spec, config) for spec in ("demo:p0", "demo:p1")]

    split = build_runtime(config, sources, sources[1].meta.stats, device="cpu", heldout=1)
    assert [d.num_episodes for d in split.datasets] == [2, 2]
    assert sorted(split.heldout) == ["p0", "p1"]
    assert [d.num_episodes for d in split.heldout.values()] == [1, 1]

    whole = build_runtime(config, sources[:1], sources[0].meta.stats, device="cpu", heldout=None)
    assert [d.num_episodes for d in whole.datasets] == [3] and whole.heldout == {}

    nothing_held = build_runtime(config, sources[:1], sources[0].meta.stats, device="cpu", heldout=0)
    assert [d.num_episodes for d in nothing_held.datasets] == [3] and nothing_held.heldout == {}

    torch.manual_seed(123)  # whatever the global RNG held before, each build seeds it from the config
    evaluation, _ = evaluation_setup(config, device="cpu")
    initial = trainable_state(evaluation.policy)
    for built in (split, whole, nothing_held):
        state = trainable_state(built.bundle.policy)
        assert state.keys() == initial.keys()
        assert all(torch.equal(state[k], initial[k]) for k in initial)
