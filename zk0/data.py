"""Everything about a dataset spec (demo name, local directory, hub repo id): what it names
(`resolve_spec`, `dataset_name`), how it opens and is validated (`open_source`, `check_spec`), how it
splits (`training_split`) and how it is described at join (`describe`). Every problem a user can fix
becomes one Zk0Error line that names the dataset."""

from __future__ import annotations

import contextlib
import json
import logging
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
from lerobot.datasets import CODEBASE_VERSION, LeRobotDataset, LeRobotDatasetMetadata
from lerobot.utils.constants import DEFAULT_FEATURES, HF_LEROBOT_HUB_CACHE

from zk0 import hub
from zk0.config import Config
from zk0.demo import demo_dataset_dir, demo_repo_id, ensure_demo_dataset, is_demo_name
from zk0.errors import Zk0Error
from zk0.rename import disk_names, rename_metadata

log = logging.getLogger(__name__)

DEMO_PREFIX = "demo:"
STATE = "observation.state"
ACTION = "action"
CAMERA_PREFIX = "observation.images."
VIDEO_BACKEND = "pyav"  # torchcodec needs a system FFmpeg; without it lerobot prints a traceback per start
_REQUIRED_META = ("meta/tasks.parquet", "meta/episodes")  # lerobot's metadata needs them; stats are optional
_SYNC_COLUMNS = ["episode_index", "frame_index", "timestamp"]
_ACCEPTED = (
    "'demo:NAME' (a generated demo dataset: p0, p1, ... or eval), "
    "a local LeRobot dataset directory (one with meta/info.json), or a Hugging Face hub repo id 'owner/name'"
)


@dataclass(frozen=True)
class DatasetRef:
    """Where a dataset spec points: `root` is None for a hub dataset (lerobot's cache decides)."""

    spec: str
    repo_id: str
    root: Path | None
    is_demo: bool
    is_hub: bool


def resolve_spec(spec: str, demo_root: Path) -> DatasetRef:
    """Classify a spec; a demo dataset is not generated here (the caller ensures it)."""
    if spec.startswith(DEMO_PREFIX):
        name = spec.removeprefix(DEMO_PREFIX)
        if not is_demo_name(name):
            raise Zk0Error(
                f"dataset spec '{spec}': no such demo dataset (demo names are p0, p1, ... and eval)"
            )
        return DatasetRef(spec, demo_repo_id(name), demo_dataset_dir(demo_root, name), True, False)
    path = Path(spec).expanduser()
    if spec.strip() and path.is_dir():
        if not (path / "meta" / "info.json").is_file():
            raise Zk0Error(
                f"dataset spec '{spec}': the directory has no meta/info.json, not a LeRobot dataset"
            )
        return DatasetRef(spec, f"{hub.LOCAL_OWNER}/{path.resolve().name}", path, False, False)
    if spec.strip() and path.exists():
        raise Zk0Error(f"dataset spec '{spec}': {path} is a file, not a LeRobot dataset directory")
    if looks_like_path(spec):
        raise Zk0Error(f"dataset spec '{spec}': no such directory, {path} does not exist; use {_ACCEPTED}")
    if hub.looks_like_hub_id(spec):
        return DatasetRef(spec, spec, None, False, True)
    what = f"no directory '{spec}' exists here and it is no hub id" if spec.strip() else "it is empty"
    raise Zk0Error(f"dataset spec '{spec}' is not understood ({what}): use {_ACCEPTED}")


def looks_like_path(spec: str) -> bool:
    """Whether a spec that names nothing here was meant as a local path, so "does not exist" is the news, not
    the hub: it starts like a path (/ ./ ../ ~), has more than one slash, or its parent directory exists
    (a mistyped last component). A plain owner/name whose owner is no local directory stays a hub id."""
    text = spec.strip()
    if text.startswith(("/", "./", "../", "~", ".\\", "..\\")) or text in (".", ".."):
        return True
    if text.count("/") > 1 or "\\" in text:
        return True
    parent = Path(text).expanduser().parent
    return "/" in text and str(parent) not in ("", ".") and parent.is_dir()


def dataset_name(spec: str) -> str:
    """The short name a spec goes by (a participant's default name, a dataset's key in metrics and cards):
    demo:p0 -> p0, owner/name -> name, /data/run-3 -> run-3; a directory's name, never its path."""
    tail = spec.removeprefix(DEMO_PREFIX).rstrip("/").rsplit("/", 1)[-1]
    cleaned = re.sub(r"[^A-Za-z0-9_.-]", "-", tail).strip("-._")[:64]
    return cleaned or "participant"


def dataset_names(specs: list[str]) -> list[str]:
    """`dataset_name` of each spec, refused when two specs would go by the same name (one would hide the
    other in every table keyed by it)."""
    names = [dataset_name(spec) for spec in specs]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise Zk0Error(
                f"datasets '{specs[names.index(name)]}' and '{specs[i]}' would both be named '{name}'; "
                "give each its own directory or repository name"
            )
    return names


def load_metadata(ref: DatasetRef) -> LeRobotDatasetMetadata:
    """The dataset's metadata (features, fps, stats, episodes), without its frames."""
    if ref.root is not None:
        _check_local_format(ref, ref.root)
    with _translated_errors(ref):
        return LeRobotDatasetMetadata(ref.repo_id, root=ref.root)


def open_dataset(
    ref: DatasetRef, *, episodes: list[int] | None, delta_timestamps: dict[str, list[float]] | None
) -> LeRobotDataset:
    """The frames of `episodes` (all if None), decoded with PyAV, with SmolVLA's action-chunk offsets."""
    with _translated_errors(ref):
        return LeRobotDataset(
            ref.repo_id,
            root=ref.root,
            episodes=episodes,
            delta_timestamps=delta_timestamps,
            video_backend=VIDEO_BACKEND,
        )


def validate(
    meta: LeRobotDatasetMetadata,
    ref: DatasetRef,
    *,
    expected_fps: int | None,
    state_dim: int | None,
    action_dim: int | None,
) -> None:
    """Reject a dataset SmolVLA cannot train on here, before any training starts."""
    problems = _missing_features(meta)
    if expected_fps is not None and meta.fps != expected_fps:
        problems.append(f"fps is {meta.fps}, expected {expected_fps}")
    problems += _dimension_problem(meta, STATE, state_dim)
    problems += _dimension_problem(meta, ACTION, action_dim)
    if problems:
        raise Zk0Error(f"dataset '{ref.spec}': {'; '.join(problems)}")
    _check_timestamps(meta, ref)


def split_episodes(total: int, heldout: int) -> tuple[list[int], list[int]]:
    """(train, held-out) episode indices: the last `heldout` episodes are held out, the same every round."""
    if heldout < 0 or heldout >= total:
        raise Zk0Error(
            f"cannot hold out {heldout} of {total} episodes: need 0 <= heldout < total "
            "(at least one episode must stay for training)"
        )
    cut = total - heldout
    return list(range(cut)), list(range(cut, total))


@dataclass
class Source:
    """One opened, validated dataset: its spec, where it is, and its metadata under the run's names."""

    spec: str
    ref: DatasetRef
    meta: LeRobotDatasetMetadata  # with `rename` applied: the run's feature names
    rename: dict[str, str] = field(default_factory=dict)  # the dataset's names -> the run's

    @property
    def name(self) -> str:
        return dataset_name(self.spec)


def demo_root(config: Config) -> Path:
    return Path(config.demo.root).expanduser()


def check_spec(spec: str, rename: Mapping[str, str] | None = None) -> Source | None:
    """What can be checked of a dataset before the run's config is known (a participant, before it joins):
    the spec resolves, and a local or hub dataset is a LeRobot dataset with the required features (after
    `rename`) and timestamps in sync. None for a demo spec, which the run's config generates."""
    ref = resolve_spec(spec, Path(".zk0/demo"))  # the demo root only matters for demo specs
    if ref.is_demo:
        return None
    return _opened(ref, rename, expected_fps=None, state_dim=None, action_dim=None)


def open_source(spec: str, config: Config, rename: Mapping[str, str] | None = None) -> Source:
    """Resolve, (generate,) load and validate one dataset, its features renamed by `rename` (a participant's
    --rename); every problem is a Zk0Error naming it."""
    root = demo_root(config)
    ref = resolve_spec(spec, root)
    if ref.is_demo:
        demo = config.demo
        ensure_demo_dataset(
            root,
            spec.removeprefix(DEMO_PREFIX),
            seed=demo.seed,
            episodes=demo.episodes,
            frames_per_episode=demo.frames_per_episode,
            participants=demo.participants,
        )
    data = config.data
    return _opened(ref, rename, expected_fps=data.fps, state_dim=data.state_dim, action_dim=data.action_dim)


def _opened(
    ref: DatasetRef,
    rename: Mapping[str, str] | None,
    *,
    expected_fps: int | None,
    state_dim: int | None,
    action_dim: int | None,
) -> Source:
    meta = load_metadata(ref)
    rename = dict(rename or {})
    rename_metadata(meta, rename, ref.spec)
    validate(meta, ref, expected_fps=expected_fps, state_dim=state_dim, action_dim=action_dim)
    return Source(ref.spec, ref, meta, rename)


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


def describe(meta: LeRobotDatasetMetadata) -> dict[str, Any]:
    """A dataset's shape, never its data: what a participant sends at join (the coordinator checks it
    against the run's features) and what a model card lists."""
    return {
        "repo_id": meta.repo_id,
        "episodes": meta.total_episodes,
        "frames": meta.total_frames,
        "fps": float(meta.fps),
        "features": {
            k: {"dtype": str(v["dtype"]), "shape": [int(n) for n in v["shape"]]}
            for k, v in meta.features.items()
        },
    }


def check_same_layout(sources: list[Source]) -> None:
    """One policy trains on all of them, so their feature layouts must agree."""
    first = sources[0]
    for other in sources[1:]:
        for key in (STATE, ACTION):
            a, b = first.meta.features[key]["shape"], other.meta.features[key]["shape"]
            if tuple(a) != tuple(b):
                raise Zk0Error(
                    f"dataset {other.spec}: {key} shape {tuple(b)} differs from {first.spec}'s {tuple(a)}"
                )
        cams_a = {k for k in first.meta.features if k.startswith(CAMERA_PREFIX)}
        cams_b = {k for k in other.meta.features if k.startswith(CAMERA_PREFIX)}
        if cams_a != cams_b:
            raise Zk0Error(
                f"dataset {other.spec}: cameras {sorted(cams_b)} differ from {first.spec}'s {sorted(cams_a)}"
            )


def _missing_features(meta: LeRobotDatasetMetadata) -> list[str]:
    features = meta.features
    missing = [key for key in (STATE, ACTION) if key not in features]
    if not any(key.startswith(CAMERA_PREFIX) for key in meta.camera_keys):
        missing.append(f"a camera ({CAMERA_PREFIX}*)")
    if not missing:
        return []
    present = sorted(key for key in features if key not in DEFAULT_FEATURES)
    return [
        f"missing required feature(s) {', '.join(missing)} (it has: {', '.join(present) or 'nothing else'})"
    ]


def _dimension_problem(meta: LeRobotDatasetMetadata, key: str, expected: int | None) -> list[str]:
    if expected is None or key not in meta.features:
        return []
    shape = tuple(meta.features[key]["shape"])
    if shape == (expected,):
        return []
    return [f"{key} has shape {shape}, expected ({expected},)"]


def _check_timestamps(meta: LeRobotDatasetMetadata, ref: DatasetRef) -> None:
    """Every frame's timestamp must be within one frame period of frame_index / fps: otherwise video
    frames and action chunks are looked up at the wrong times. Reads parquet columns only, no video."""
    fps = meta.fps
    for path in _data_files(meta, ref):
        table = pq.read_table(path, columns=_SYNC_COLUMNS).to_pydict()
        episode = np.asarray(table["episode_index"])
        frame = np.asarray(table["frame_index"], dtype=np.float64)
        timestamp = np.asarray(table["timestamp"], dtype=np.float64)
        drift = np.abs(timestamp - frame / fps)
        worst = int(np.argmax(drift)) if len(drift) else 0
        if len(drift) and drift[worst] > 1.0 / fps + 1e-9:
            raise Zk0Error(
                f"dataset '{ref.spec}': timestamps out of sync in episode {int(episode[worst])}: "
                f"frame {int(frame[worst])} has timestamp {timestamp[worst]:.4f}s, expected "
                f"{frame[worst] / fps:.4f}s (more than one frame period, {1.0 / fps:.4f}s, off)"
            )


def _data_files(meta: LeRobotDatasetMetadata, ref: DatasetRef) -> list[Path]:
    """The parquet frame tables; for a hub dataset whose metadata came alone, fetch them (no videos)."""
    root = Path(meta.root)
    if ref.is_hub and not any((root / "data").rglob("*.parquet")):
        with _translated_errors(ref):
            root = hub.fetch_dataset_files(
                ref.repo_id, revision=meta.revision, cache_dir=HF_LEROBOT_HUB_CACHE, allow_patterns="data/*"
            )
    files = sorted((root / "data").rglob("*.parquet"))
    if not files:
        raise Zk0Error(f"dataset '{ref.spec}': no frame data (data/**/*.parquet) under {root}")
    return files


def _check_local_format(ref: DatasetRef, root: Path) -> None:
    """Without this, lerobot answers a missing or old-format local dataset by going to the hub."""
    info_path = root / "meta" / "info.json"
    if not info_path.is_file():
        hint = " (generate the demo first)" if ref.is_demo else ""
        raise Zk0Error(f"dataset '{ref.spec}': no LeRobot dataset at {root}{hint}")
    try:
        info: dict[str, Any] = json.loads(info_path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise Zk0Error(f"dataset '{ref.spec}': cannot read {info_path}: {e}") from e
    version = info.get("codebase_version")
    if version != CODEBASE_VERSION:
        raise Zk0Error(
            f"dataset '{ref.spec}' is in LeRobot format {version}, zk0 needs {CODEBASE_VERSION} "
            "(convert it with lerobot's dataset conversion script)"
        )
    missing = [name for name in _REQUIRED_META if not (root / name).exists()]
    if missing:
        raise Zk0Error(f"dataset '{ref.spec}'{_at(ref)} is incomplete: {', '.join(missing)} missing")


def _at(ref: DatasetRef) -> str:
    """' at ROOT' when the spec alone does not say where the files are."""
    return "" if ref.root is None or str(ref.root) == ref.spec else f" at {ref.root}"


@contextlib.contextmanager
def _translated_errors(ref: DatasetRef) -> Iterator[None]:
    """Hub failures become one line naming the dataset."""
    try:
        yield
    except hub.HUB_ERRORS as e:
        raise _hub_failure(ref, e) from e


def _hub_failure(ref: DatasetRef, error: BaseException) -> Zk0Error:
    if not ref.is_hub:
        # lerobot goes to the hub when a file of a local dataset is missing: the dataset is incomplete.
        return Zk0Error(
            f"dataset '{ref.spec}'{_at(ref)} is incomplete: lerobot found a file missing and went to the hub "
            f"for it ({hub.first_line(error)})"
        )
    return hub.dataset_failure(ref.spec, error)
