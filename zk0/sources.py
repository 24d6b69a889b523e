"""From a config's dataset specs to validated LeRobot datasets: generate demo data on first use, load the
metadata, validate it, and split each dataset into training and held-out episodes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lerobot.datasets import LeRobotDataset, LeRobotDatasetMetadata

from zk0.config import Config
from zk0.data import DatasetRef, load_metadata, open_dataset, resolve_spec, split_episodes, validate
from zk0.demo import ensure_demo_dataset
from zk0.errors import Zk0Error


@dataclass
class Source:
    spec: str
    ref: DatasetRef
    meta: LeRobotDatasetMetadata

    @property
    def name(self) -> str:
        return self.spec.removeprefix("demo:")


def demo_root(config: Config) -> Path:
    return Path(config.demo.root).expanduser()


def open_source(spec: str, config: Config) -> Source:
    """Resolve, (generate,) load and validate one dataset; every problem is a Zk0Error naming it."""
    root = demo_root(config)
    ref = resolve_spec(spec, root)
    if ref.is_demo:
        ensure_demo_dataset(
            root,
            spec.removeprefix("demo:"),
            seed=config.demo.seed,
            episodes=config.demo.episodes,
            frames_per_episode=config.demo.frames_per_episode,
            participants=config.demo.participants,
        )
    meta = load_metadata(ref)
    validate(
        meta,
        ref,
        expected_fps=config.data.fps,
        state_dim=config.data.state_dim,
        action_dim=config.data.action_dim,
    )
    return Source(spec, ref, meta)


def training_split(
    source: Source, *, heldout: int, delta_timestamps: dict
) -> tuple[LeRobotDataset, LeRobotDataset | None]:
    """The dataset's first episodes for training and its last `heldout` for local evaluation."""
    train_eps, heldout_eps = split_episodes(source.meta.total_episodes, heldout)
    train = open_dataset(source.ref, episodes=train_eps, delta_timestamps=delta_timestamps)
    held = (
        open_dataset(source.ref, episodes=heldout_eps, delta_timestamps=delta_timestamps)
        if heldout_eps
        else None
    )
    return train, held


def check_same_layout(sources: list[Source]) -> None:
    """One policy trains on all of them, so their feature layouts must agree."""
    first = sources[0]
    for other in sources[1:]:
        for key in ("observation.state", "action"):
            a, b = first.meta.features[key]["shape"], other.meta.features[key]["shape"]
            if tuple(a) != tuple(b):
                raise Zk0Error(
                    f"dataset {other.spec}: {key} shape {tuple(b)} differs from {first.spec}'s {tuple(a)}"
                )
        cams_a = {k for k in first.meta.features if k.startswith("observation.images.")}
        cams_b = {k for k in other.meta.features if k.startswith("observation.images.")}
        if cams_a != cams_b:
            raise Zk0Error(
                f"dataset {other.spec}: cameras {sorted(cams_b)} differ from {first.spec}'s {sorted(cams_a)}"
            )
