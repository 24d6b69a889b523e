"""From a config's dataset specs to validated LeRobot datasets: generate demo data on first use, load the
metadata, validate it, and split each dataset into training and held-out episodes."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from lerobot.datasets import LeRobotDataset, LeRobotDatasetMetadata

from zk0.config import Config
from zk0.data import DatasetRef, load_metadata, open_dataset, resolve_spec, split_episodes, validate
from zk0.demo import ensure_demo_dataset
from zk0.errors import Zk0Error
from zk0.rename import disk_names, rename_metadata


@dataclass
class Source:
    spec: str
    ref: DatasetRef
    meta: LeRobotDatasetMetadata  # with `rename` applied: the run's feature names
    rename: dict[str, str] = field(default_factory=dict)  # the dataset's names -> the run's

    @property
    def name(self) -> str:
        return self.spec.removeprefix("demo:")


def demo_root(config: Config) -> Path:
    return Path(config.demo.root).expanduser()


def check_spec(spec: str, rename: Mapping[str, str] | None = None) -> Source | None:
    """What can be checked of a dataset before the run's config is known (a participant, before it joins):
    the spec resolves, and a local or hub dataset is a LeRobot dataset with the required features (after
    `rename`) and timestamps in sync. None for a demo spec, which the run's config generates."""
    ref = resolve_spec(spec, Path(".zk0/demo"))  # the demo root only matters for demo specs
    if ref.is_demo:
        return None
    meta = load_metadata(ref)
    rename = dict(rename or {})
    rename_metadata(meta, rename, spec)
    validate(meta, ref, expected_fps=None, state_dim=None, action_dim=None)
    return Source(spec, ref, meta, rename)


def open_source(spec: str, config: Config, rename: Mapping[str, str] | None = None) -> Source:
    """Resolve, (generate,) load and validate one dataset, its features renamed by `rename` (a participant's
    --rename); every problem is a Zk0Error naming it."""
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
    rename = dict(rename or {})
    rename_metadata(meta, rename, spec)
    validate(
        meta,
        ref,
        expected_fps=config.data.fps,
        state_dim=config.data.state_dim,
        action_dim=config.data.action_dim,
    )
    return Source(spec, ref, meta, rename)


def training_split(
    source: Source, *, heldout: int, delta_timestamps: dict
) -> tuple[LeRobotDataset, LeRobotDataset | None]:
    """The dataset's first episodes for training and its last `heldout` for local evaluation."""
    train_eps, heldout_eps = split_episodes(source.meta.total_episodes, heldout)
    delta_timestamps = disk_names(delta_timestamps, source.rename)  # the files keep the dataset's names
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
