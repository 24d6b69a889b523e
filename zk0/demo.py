"""The embedded demo: synthetic SO-100-like LeRobot datasets (and the tiny SmolVLM of zk0/tiny_vlm.py),
generated deterministically on first use and cached on disk, so the whole system runs offline on a CPU.

Each episode shows one coloured square (the target) in a 64x64 camera image and a white dot (where the
arm points now). The target's position and colour fix a target joint configuration; the arm closes a
fixed fraction of the remaining gap every frame. So the actions follow from what the camera sees and the
task string says, and a policy can learn them. Participants "p0", "p1", ... differ in colour (hence in the
gripper's target) and in the image quadrant their targets mostly appear in; "eval" draws from all
quadrants and from the participants' colours, so what it asks is learnable from their union only.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import datasets
import numpy as np
from lerobot.configs import RGBEncoderConfig
from lerobot.datasets import LeRobotDataset
from tqdm import tqdm

from zk0.demo_tasks import COLOURS, TASK_TEMPLATES
from zk0.errors import Zk0Error
from zk0.generated_dirs import is_complete, staging, write_marker
from zk0.tiny_vlm import ensure_vlm_assets

log = logging.getLogger(__name__)

GENERATOR_VERSION = 1  # in each dataset's marker: bump it when the datasets change

DEMO_FPS = 30
ROBOT_TYPE = "so100_follower"
REPO_PREFIX = "zk0-demo"
CAMERA_KEY = "observation.images.front"
IMAGE_SIZE = 64
JOINT_NAMES = [
    "shoulder_pan.pos",
    "shoulder_lift.pos",
    "elbow_flex.pos",
    "wrist_flex.pos",
    "wrist_roll.pos",
    "gripper.pos",
]
SQUARE = 12  # side of the target square, pixels
OWN_REGION_P = 0.8  # share of a participant's episodes whose target lies in its own quadrant
GAIN = 0.08  # fraction of the remaining gap to the target closed per frame
ACTION_NOISE = 0.2
STATE_NOISE = 0.05
START_NOISE = 4.0
_PARTICIPANT = re.compile(r"^p(\d+)$")
_SVT_QUIET = "1"  # SVT-AV1's log level: errors only (it prints ~20 info lines per encoded episode)


@dataclass(frozen=True)
class DemoPaths:
    """Where the generated demo lives: the tiny VLM directory and one dataset directory per name."""

    vlm_dir: Path
    participant_datasets: list[Path]
    eval_dataset: Path


@dataclass(frozen=True)
class _Profile:
    """What makes one demo dataset's distribution differ from another's (its non-IID part)."""

    colours: tuple[str, ...]
    region: int | None  # quadrant 0..3 the targets mostly fall in; None = anywhere


def is_demo_name(name: str) -> bool:
    return name == "eval" or bool(_PARTICIPANT.match(name))


def demo_repo_id(name: str) -> str:
    return f"{REPO_PREFIX}/{name}"


def demo_dataset_dir(root: Path, name: str) -> Path:
    return Path(root) / "datasets" / name


def demo_features() -> dict[str, dict[str, Any]]:
    """LeRobot feature spec; camera shape is (H, W, C) with names saying so, as lerobot's recorder writes."""
    vector = {"dtype": "float32", "shape": (len(JOINT_NAMES),), "names": list(JOINT_NAMES)}
    return {
        "observation.state": dict(vector),
        "action": dict(vector),
        CAMERA_KEY: {
            "dtype": "video",
            "shape": (IMAGE_SIZE, IMAGE_SIZE, 3),
            "names": ["height", "width", "channels"],
        },
    }


def ensure_demo_dataset(
    root: Path,
    name: str,
    *,
    seed: int,
    episodes: int,
    frames_per_episode: int,
    participants: int | None = None,
) -> Path:
    """The demo dataset `name` under `root/datasets`, generated unless already there with these parameters.

    `participants` matters for "eval" only: its targets take the colours of p0..p{participants-1}, so
    everything it asks is learnable from their union (None: every demo colour).
    """
    if episodes < 1 or frames_per_episode < 2:
        raise Zk0Error(f"demo dataset '{name}': needs episodes >= 1 and frames_per_episode >= 2")
    target = demo_dataset_dir(root, name)
    params = _dataset_params(name, seed, episodes, frames_per_episode, participants)
    if is_complete(target, params):
        return target
    with staging(target) as building, _quiet_encoding():
        _write_dataset(
            building,
            name,
            _profile(name, participants),
            seed=seed,
            episodes=episodes,
            frames=frames_per_episode,
        )
        write_marker(building, params)
    return target


def ensure_demo(
    root: Path,
    *,
    seed: int,
    participants: int,
    episodes: int,
    frames_per_episode: int,
    eval_episodes: int,
) -> DemoPaths:
    """The whole demo: VLM assets, `participants` datasets p0.. and the held-out `eval` dataset."""
    if participants < 1:
        raise Zk0Error("the demo needs at least one participant")
    root = Path(root)
    jobs = [(f"p{i}", episodes) for i in range(participants)] + [("eval", eval_episodes)]
    pending = [
        (name, n)
        for name, n in jobs
        if not is_complete(
            demo_dataset_dir(root, name), _dataset_params(name, seed, n, frames_per_episode, participants)
        )
    ]
    vlm_dir = ensure_vlm_assets(root)
    quiet = not pending or not sys.stderr.isatty()  # a progress bar only on a terminal
    for name, n in tqdm(pending, desc="generating demo datasets", unit="dataset", disable=quiet):
        ensure_demo_dataset(
            root,
            name,
            seed=seed,
            episodes=n,
            frames_per_episode=frames_per_episode,
            participants=participants,
        )
    if not pending:
        log.info("demo datasets already generated under %s", root / "datasets")
    paths = [demo_dataset_dir(root, name) for name, _ in jobs]
    return DemoPaths(vlm_dir=vlm_dir, participant_datasets=paths[:-1], eval_dataset=paths[-1])


def target_joints(u: float, v: float, colour: str) -> np.ndarray:
    """Joint configuration that reaches image point (u, v) in [0, 1]^2 with the colour's grip width."""
    return np.array(
        [
            -60.0 + 120.0 * u,
            -30.0 + 70.0 * v,
            60.0 - 80.0 * v,
            40.0 - 30.0 * v + 10.0 * u,
            20.0 * np.sin(2.0 * np.pi * u),
            COLOURS[colour][1],
        ],
        dtype=np.float64,
    )


def pointed_at(state: np.ndarray) -> tuple[float, float]:
    """Image point (u, v) the arm points at: the inverse of `target_joints` on the first two joints."""
    u = (float(state[0]) + 60.0) / 120.0
    v = (float(state[1]) + 30.0) / 70.0
    return min(max(u, 0.0), 1.0), min(max(v, 0.0), 1.0)


def _profile(name: str, participants: int | None) -> _Profile:
    if not is_demo_name(name):
        raise Zk0Error(f"demo dataset '{name}' does not exist: demo names are 'p0', 'p1', ... and 'eval'")
    if name != "eval":
        index = int(name[1:])
        return _Profile(colours=(_participant_colour(index),), region=index % 4)
    if participants is None:
        return _Profile(colours=tuple(COLOURS), region=None)
    return _Profile(
        colours=tuple(dict.fromkeys(_participant_colour(i) for i in range(participants))), region=None
    )


def _participant_colour(index: int) -> str:
    return list(COLOURS)[index % len(COLOURS)]


def _dataset_params(
    name: str, seed: int, episodes: int, frames: int, participants: int | None
) -> dict[str, Any]:
    profile = _profile(name, participants)
    return {
        "generator": GENERATOR_VERSION,
        "name": name,
        "seed": seed,
        "episodes": episodes,
        "frames_per_episode": frames,
        "fps": DEMO_FPS,
        "image_size": IMAGE_SIZE,
        "colours": list(profile.colours),
        "region": profile.region,
    }


def _rng(seed: int, name: str) -> np.random.Generator:
    """One stream per (seed, name): the same pair always gives the same dataset, different names differ."""
    return np.random.default_rng([seed, *name.encode()])


def _sample_target(rng: np.random.Generator, profile: _Profile) -> tuple[float, float]:
    """Target centre (u, v); a participant's targets fall mostly inside its own image quadrant."""
    margin = (SQUARE / 2 + 1) / IMAGE_SIZE
    u0, v0, span = 0.0, 0.0, 1.0
    if profile.region is not None and rng.random() < OWN_REGION_P:
        u0, v0, span = 0.5 * (profile.region % 2), 0.5 * (profile.region // 2), 0.5
    u = rng.uniform(max(u0, margin), min(u0 + span, 1 - margin))
    v = rng.uniform(max(v0, margin), min(v0 + span, 1 - margin))
    return float(u), float(v)


def _background() -> np.ndarray:
    """A dim table-like gradient, the same for everyone."""
    rows = np.linspace(35, 75, IMAGE_SIZE, dtype=np.float32)[:, None, None]
    base = np.broadcast_to(rows, (IMAGE_SIZE, IMAGE_SIZE, 3)) * np.array([1.0, 0.95, 0.85], np.float32)
    return base.astype(np.uint8)


def _draw_square(image: np.ndarray, u: float, v: float, rgb: tuple[int, int, int]) -> None:
    x0 = int(round(u * IMAGE_SIZE - SQUARE / 2))
    y0 = int(round(v * IMAGE_SIZE - SQUARE / 2))
    image[max(y0, 0) : y0 + SQUARE, max(x0, 0) : x0 + SQUARE] = rgb


def _draw_pointer(image: np.ndarray, state: np.ndarray) -> np.ndarray:
    u, v = pointed_at(state)
    x = min(int(u * IMAGE_SIZE), IMAGE_SIZE - 2)
    y = min(int(v * IMAGE_SIZE), IMAGE_SIZE - 2)
    frame = image.copy()
    frame[max(y - 1, 0) : y + 2, max(x - 1, 0) : x + 2] = 255
    return frame


def _episode(
    rng: np.random.Generator, profile: _Profile, frames: int
) -> tuple[list[np.ndarray], np.ndarray, np.ndarray, str]:
    """One episode: images, states, actions (float32, frames x 6) and its task string."""
    colour = profile.colours[int(rng.integers(len(profile.colours)))]
    task = TASK_TEMPLATES[int(rng.integers(len(TASK_TEMPLATES)))].format(colour=colour)
    u, v = _sample_target(rng, profile)
    goal = target_joints(u, v, colour)
    scene = _background()
    _draw_square(scene, u, v, COLOURS[colour][0])
    state = target_joints(0.5, 0.15, colour) + rng.normal(0.0, START_NOISE, len(JOINT_NAMES))
    state[5] = 50.0 + rng.normal(0.0, START_NOISE)
    images, states, actions = [], [], []
    for _ in range(frames):
        action = state + GAIN * (goal - state) + rng.normal(0.0, ACTION_NOISE, len(JOINT_NAMES))
        images.append(_draw_pointer(scene, state))
        states.append(state)
        actions.append(action)
        state = action + rng.normal(0.0, STATE_NOISE, len(JOINT_NAMES))
    return images, np.asarray(states, np.float32), np.asarray(actions, np.float32), task


def _write_dataset(
    staging: Path, name: str, profile: _Profile, *, seed: int, episodes: int, frames: int
) -> None:
    dataset = LeRobotDataset.create(
        repo_id=demo_repo_id(name),
        fps=DEMO_FPS,
        features=demo_features(),
        root=staging,
        robot_type=ROBOT_TYPE,
        use_videos=True,
        video_backend="pyav",
        rgb_encoder=RGBEncoderConfig(vcodec="libsvtav1", video_backend="pyav"),
    )
    rng = _rng(seed, name)
    try:
        for _ in range(episodes):
            images, states, actions, task = _episode(rng, profile, frames)
            for image, state, action in zip(images, states, actions, strict=True):
                dataset.add_frame(
                    {"observation.state": state, "action": action, CAMERA_KEY: image, "task": task}
                )
            dataset.save_episode()
    finally:
        dataset.finalize()


_quiet_lock = threading.Lock()
_quiet_depth = 0  # encodings in progress (simulate's participant threads generate their datasets at once)
_quiet_saved: tuple[str | None, bool] = (None, False)


@contextlib.contextmanager
def _quiet_encoding() -> Iterator[None]:
    """Silence what a user should not see while we encode: SVT-AV1's banner, libav's info lines after
    lerobot restores libav's default log callback, and `datasets`' per-episode progress bars. The settings
    are process-wide, so only the last of concurrent encodings to finish restores them."""
    global _quiet_depth, _quiet_saved
    with _quiet_lock:
        if _quiet_depth == 0:
            _quiet_saved = (os.environ.get("SVT_LOG"), datasets.is_progress_bar_enabled())
            os.environ["SVT_LOG"] = _SVT_QUIET
            datasets.disable_progress_bars()
            av.logging.set_libav_level(av.logging.WARNING)
        _quiet_depth += 1
    try:
        yield
    finally:
        with _quiet_lock:
            _quiet_depth -= 1
            if _quiet_depth == 0:
                previous_svt, bars_were_on = _quiet_saved
                av.logging.set_libav_level(av.logging.INFO)
                if bars_were_on:
                    datasets.enable_progress_bars()
                if previous_svt is None:
                    os.environ.pop("SVT_LOG", None)
                else:
                    os.environ["SVT_LOG"] = previous_svt
