"""A participant's map from its dataset's observation names onto the run's (`zk0-participant --rename
OLD=NEW`), at the grain of lerobot's `rename_map`: observation keys only, applied to the dataset's metadata
(so validation, the policy's input features and the description sent at join all use the run's names) and,
through the preprocessor's own `RenameObservationsProcessorStep`, to every batch read from disk."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from lerobot.datasets import LeRobotDatasetMetadata
from lerobot.processor import PolicyProcessorPipeline
from lerobot.processor.rename_processor import RenameObservationsProcessorStep

from zk0.errors import Zk0Error

OBSERVATION_PREFIX = "observation."


def parse_rename(items: Iterable[str]) -> dict[str, str]:
    """`OLD=NEW` strings to a map; both sides observation keys, each name used once."""
    rename: dict[str, str] = {}
    for item in items:
        old, sep, new = (part.strip() for part in item.partition("="))
        if not sep or not old or not new:
            raise Zk0Error(
                f"--rename '{item}': expected OLD=NEW, e.g. observation.images.top=observation.images.front"
            )
        for key in (old, new):
            if not key.startswith(OBSERVATION_PREFIX):
                raise Zk0Error(f"--rename '{item}': {key} is not an observation key ({OBSERVATION_PREFIX}*)")
        if old == new:
            raise Zk0Error(f"--rename '{item}': renames {old} to itself")
        if old in rename:
            raise Zk0Error(f"--rename '{item}': {old} is already renamed to {rename[old]}")
        if new in rename.values():
            raise Zk0Error(f"--rename '{item}': two features renamed to {new}")
        rename[old] = new
    return rename


def rename_metadata(meta: LeRobotDatasetMetadata, rename: Mapping[str, str], spec: str) -> None:
    """Rename features and their statistics in this metadata object (the files on disk are untouched)."""
    if not rename:
        return
    features = meta.info.features
    for old, new in rename.items():
        if old not in features:
            have = ", ".join(sorted(k for k in features if k.startswith(OBSERVATION_PREFIX)))
            raise Zk0Error(f"dataset '{spec}': --rename {old}={new}: it has no {old} (it has: {have})")
        if new in features and new not in rename:
            raise Zk0Error(f"dataset '{spec}': --rename {old}={new}: it already has a feature {new}")
    meta.info.features = {rename.get(k, k): v for k, v in features.items()}
    if meta.stats is not None:
        meta.stats = {rename.get(k, k): v for k, v in meta.stats.items()}


def disk_names(delta_timestamps: Mapping[str, list] | None, rename: Mapping[str, str]) -> dict | None:
    """Delta timestamps keyed by the run's names, keyed back by the names the dataset has on disk."""
    if delta_timestamps is None:
        return None
    back = {new: old for old, new in rename.items()}
    return {back.get(k, k): v for k, v in delta_timestamps.items()}


def rename_batches(preprocessor: PolicyProcessorPipeline, rename: Mapping[str, str]) -> None:
    """Set the rename map of the preprocessor's rename step, which runs first on every batch."""
    if not rename:
        return
    steps = [s for s in preprocessor.steps if isinstance(s, RenameObservationsProcessorStep)]
    if not steps:
        raise Zk0Error("this policy's preprocessor has no rename step; --rename cannot be applied")
    steps[0].rename_map = dict(rename)
