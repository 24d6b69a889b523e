"""The embedded demo: a tiny SmolVLM directory and synthetic SO-100-like LeRobot datasets, generated
deterministically on first use and cached on disk, so the whole system runs offline on a CPU.

Each episode shows one coloured square (the target) in a 64x64 camera image and a white dot (where the
arm points now). The target's position and colour fix a target joint configuration; the arm closes a
fixed fraction of the remaining gap every frame. So the actions follow from what the camera sees and the
task string says, and a policy can learn them. Participants "p0", "p1", ... differ in colour (hence in the
gripper's target) and in the image quadrant their targets mostly appear in; "eval" draws from all
quadrants and from the participants' colours, so what it asks is learnable from their union only.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
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
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from tqdm import tqdm
from transformers import LlamaConfig, PreTrainedTokenizerFast
from transformers.models.smolvlm import (
    SmolVLMConfig,
    SmolVLMImageProcessor,
    SmolVLMProcessor,
    SmolVLMVideoProcessor,
    SmolVLMVisionConfig,
)

from zk0.errors import Zk0Error

log = logging.getLogger(__name__)

GENERATOR_VERSION = 1
MARKER = "zk0_demo.json"

VLM_IMAGE_SIZE = 32
VLM_PATCH_SIZE = 8
VLM_SCALE_FACTOR = 2
VLM_TEXT_LAYERS = 4

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
# Colour name -> (RGB, gripper target): the gripper closes to a width that depends on the cube's colour.
COLOURS: dict[str, tuple[tuple[int, int, int], float]] = {
    "red": ((220, 40, 40), 10.0),
    "green": ((40, 200, 60), 25.0),
    "blue": ((50, 80, 230), 40.0),
    "yellow": ((230, 210, 40), 55.0),
    "magenta": ((210, 50, 200), 70.0),
    "cyan": ((40, 210, 220), 85.0),
}
TASK_TEMPLATES = (
    "move the arm to the {colour} cube",
    "reach for the {colour} cube",
    "touch the {colour} cube with the gripper",
)
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


def demo_tasks() -> list[str]:
    """Every task string the demo can produce (the tiny tokenizer is trained on these)."""
    return [t.format(colour=c) for c in COLOURS for t in TASK_TEMPLATES]


def ensure_vlm_assets(root: Path) -> Path:
    """The tiny SmolVLM directory (config, tokenizer, processor) under `root/vlm`, built once.

    SmolVLA reads `vlm_model_name` with AutoConfig/AutoProcessor even without weights; a local directory
    keeps that offline.
    """
    target = Path(root) / "vlm"
    params = {"generator": GENERATOR_VERSION, "kind": "vlm"}
    if _is_complete(target, params):
        return target
    with _staging(target) as staging:
        _write_vlm_assets(staging)
        _write_marker(staging, params)
    return target


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
    if _is_complete(target, params):
        return target
    with _staging(target) as staging, _quiet_encoding():
        _write_dataset(
            staging,
            name,
            _profile(name, participants),
            seed=seed,
            episodes=episodes,
            frames=frames_per_episode,
        )
        _write_marker(staging, params)
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
        if not _is_complete(
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


def _write_vlm_assets(staging: Path) -> None:
    """Tokenizer + SmolVLM config + processor, as OFFLINE.md measured works for SmolVLA."""
    tokenizer = _tiny_tokenizer()
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=VLM_TEXT_LAYERS,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
    )
    vision = SmolVLMVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=VLM_IMAGE_SIZE,
        patch_size=VLM_PATCH_SIZE,
    )
    config = SmolVLMConfig(
        text_config=text.to_dict(),
        vision_config=vision.to_dict(),
        scale_factor=VLM_SCALE_FACTOR,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        vocab_size=len(tokenizer),
    )
    edge = {"longest_edge": VLM_IMAGE_SIZE}
    processor = SmolVLMProcessor(
        image_processor=SmolVLMImageProcessor(do_image_splitting=False, size=edge, max_image_size=edge),
        tokenizer=tokenizer,
        video_processor=SmolVLMVideoProcessor(),
        image_seq_len=(VLM_IMAGE_SIZE // VLM_PATCH_SIZE) ** 2 // VLM_SCALE_FACTOR**2,
    )
    config.save_pretrained(staging)
    processor.save_pretrained(staging)


def _tiny_tokenizer() -> PreTrainedTokenizerFast:
    """Byte-level BPE on the demo's task strings; the dict form of extra_special_tokens is what gives
    the tokenizer the fake_image_token_id / global_image_token_id attributes SmolVLA reads."""
    special = [
        "<|endoftext|>",
        "<|im_start|>",
        "<|im_end|>",
        "<end_of_utterance>",
        "<fake_token_around_image>",
        "<image>",
        "<global-img>",
    ]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512,
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator([f"{task}\n" for task in demo_tasks()], trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token="<|im_start|>",
        eos_token="<end_of_utterance>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        extra_special_tokens={
            "fake_image_token": "<fake_token_around_image>",
            "image_token": "<image>",
            "global_image_token": "<global-img>",
            "end_of_utterance_token": "<end_of_utterance>",
        },
    )


def _is_complete(target: Path, params: dict[str, Any]) -> bool:
    """A directory counts only once its marker (written last, before the rename) matches `params`."""
    try:
        return json.loads((target / MARKER).read_text()) == params
    except FileNotFoundError:
        return False
    except (OSError, json.JSONDecodeError) as e:
        log.warning("ignoring unreadable demo marker %s (%s); regenerating", target / MARKER, e)
        return False


def _write_marker(directory: Path, params: dict[str, Any]) -> None:
    (directory / MARKER).write_text(json.dumps(params, indent=2, sort_keys=True) + "\n")


@contextlib.contextmanager
def _staging(target: Path) -> Iterator[Path]:
    """A fresh sibling directory to build into; on success it replaces `target` by rename, so a crash
    never leaves a half-written directory under the final name. Staging left by dead processes is removed."""
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_orphans(target)
    staging = target.parent / f".{target.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        yield staging
        _replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _replace(staging: Path, target: Path) -> None:
    stale = target.parent / f".{target.name}.stale-{os.getpid()}"
    if target.exists():
        target.rename(stale)
    try:
        staging.rename(target)
    except OSError:
        if not target.exists():
            raise
        log.info("%s was generated concurrently by another process; keeping that one", target)
    finally:
        shutil.rmtree(stale, ignore_errors=True)


def _remove_orphans(target: Path) -> None:
    for leftover in target.parent.glob(f".{target.name}.*-*"):
        pid = leftover.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(leftover, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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
