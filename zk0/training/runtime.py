"""The runtime every trainer and evaluator starts from, built one way: the participant, the centralized
baseline and the coordinator's evaluation policy seed alike, so each starts from the config's one initial
model, and read their datasets with the same delta timestamps and episode split.

No Lightning here: the coordinator builds its evaluation policy through this module too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from lerobot.datasets.factory import resolve_delta_timestamps
from torch.utils.data import Dataset

from zk0.config import Config
from zk0.data import Source, demo_root, open_dataset, training_split
from zk0.policy import PolicyBundle, build_policy
from zk0.rename import disk_names, rename_batches


@dataclass
class Runtime:
    bundle: PolicyBundle
    datasets: list[Dataset]  # one per source, in order: its training episodes (every episode when unsplit)
    heldout: dict[str, Dataset]  # by source name; a source that holds no episode back has none


def build_runtime(
    config: Config, sources: Sequence[Source], stats: dict, *, device: str, heldout: int | None
) -> Runtime:
    """Seed torch with config.seed (the tiny demo's frozen backbone and the initial expert come from it),
    build the policy for the first source's features normalized with `stats` (renaming each batch as that
    source's --rename says), and open each source with the policy's delta timestamps: its last `heldout`
    episodes held out, or (None) every episode, unsplit."""
    meta = sources[0].meta
    torch.manual_seed(config.seed)
    bundle = build_policy(config.model, meta, stats, device=device, demo_root=demo_root(config))
    rename_batches(bundle.preprocessor, sources[0].rename)
    delta = resolve_delta_timestamps(bundle.policy.config, meta)
    datasets, held = [], {}
    for source in sources:
        if heldout is None:
            delta_on_disk = disk_names(delta, source.rename)
            datasets.append(open_dataset(source.ref, episodes=None, delta_timestamps=delta_on_disk))
            continue
        train, held_out = training_split(source, heldout=heldout, delta_timestamps=delta)
        datasets.append(train)
        if held_out is not None:
            held[source.name] = held_out
    return Runtime(bundle, datasets, held)
