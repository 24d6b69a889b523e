"""The embedded demo: deterministic, cached, learnable, and usable by a real (tiny) SmolVLA."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SMALL_DEMO
from lerobot.datasets import LeRobotDataset, LeRobotDatasetMetadata
from lerobot.datasets.factory import resolve_delta_timestamps
from lerobot.policies.factory import make_policy, make_pre_post_processors
from lerobot.policies.smolvla import SmolVLAConfig
from transformers import AutoProcessor, AutoTokenizer

from zk0.data import open_dataset, resolve_spec
from zk0.demo import (
    CAMERA_KEY,
    DEMO_FPS,
    GAIN,
    JOINT_NAMES,
    DemoPaths,
    demo_repo_id,
    ensure_demo,
    ensure_demo_dataset,
)
from zk0.demo_tasks import COLOURS
from zk0.errors import Zk0Error
from zk0.generated_dirs import MARKER
from zk0.tiny_vlm import VLM_IMAGE_SIZE, VLM_TEXT_LAYERS, ensure_vlm_assets

TINY = {"seed": 7, "episodes": 2, "frames_per_episode": 12}


def _read(path: Path, name: str) -> LeRobotDataset:
    return LeRobotDataset(demo_repo_id(name), root=path, video_backend="pyav")


def _columns(dataset: LeRobotDataset) -> dict[str, np.ndarray]:
    table = dataset.hf_dataset.with_format("numpy")
    return {key: np.stack(table[key]) for key in ("observation.state", "action", "timestamp")}


def _episode_arrays(dataset: LeRobotDataset, episode: int) -> tuple[np.ndarray, np.ndarray]:
    table = dataset.hf_dataset.with_format("numpy")
    rows = np.asarray(table["episode_index"]) == episode
    return np.stack(table["observation.state"])[rows], np.stack(table["action"])[rows]


def test_vlm_assets_load_offline_with_the_image_token_ids(demo_root: Path) -> None:
    vlm = ensure_vlm_assets(demo_root)
    tokenizer = AutoTokenizer.from_pretrained(vlm)
    processor = AutoProcessor.from_pretrained(vlm)
    assert isinstance(tokenizer.fake_image_token_id, int)
    assert isinstance(tokenizer.global_image_token_id, int)
    assert processor.tokenizer.fake_image_token_id == tokenizer.fake_image_token_id
    assert tokenizer("reach for the red cube\n")["input_ids"]


def test_vlm_assets_are_built_once(demo_root: Path) -> None:
    marker = ensure_vlm_assets(demo_root) / MARKER
    before = marker.stat().st_mtime_ns
    ensure_vlm_assets(demo_root)
    assert marker.stat().st_mtime_ns == before


def test_same_seed_and_name_give_the_same_dataset(tmp_path: Path) -> None:
    first = _read(ensure_demo_dataset(tmp_path / "a", "p1", **TINY), "p1")
    second = _read(ensure_demo_dataset(tmp_path / "b", "p1", **TINY), "p1")
    for key, value in _columns(first).items():
        np.testing.assert_array_equal(value, _columns(second)[key], err_msg=key)
    assert torch.equal(first[0][CAMERA_KEY], second[0][CAMERA_KEY])
    assert first.meta.tasks.index.tolist() == second.meta.tasks.index.tolist()


def test_a_different_name_gives_different_data(tmp_path: Path) -> None:
    p1 = _read(ensure_demo_dataset(tmp_path, "p1", **TINY), "p1")
    p2 = _read(ensure_demo_dataset(tmp_path, "p2", **TINY), "p2")
    assert not np.array_equal(_columns(p1)["action"], _columns(p2)["action"])
    assert not torch.equal(p1[0][CAMERA_KEY], p2[0][CAMERA_KEY])


def test_regenerates_only_when_parameters_change(tmp_path: Path) -> None:
    path = ensure_demo_dataset(tmp_path, "p0", **TINY)
    stamp = (path / MARKER).stat().st_mtime_ns
    ensure_demo_dataset(tmp_path, "p0", **TINY)
    assert (path / MARKER).stat().st_mtime_ns == stamp
    ensure_demo_dataset(tmp_path, "p0", **{**TINY, "episodes": 3})
    assert LeRobotDatasetMetadata(demo_repo_id("p0"), root=path).total_episodes == 3
    assert sorted(p.name for p in path.parent.iterdir()) == ["p0"], "no staging directory may be left"


def test_leftovers_of_a_crashed_generation_never_count(tmp_path: Path) -> None:
    """A directory without the marker is half-written: regenerate it. Staging of dead processes goes."""
    half = tmp_path / "datasets" / "p0"
    (half / "meta").mkdir(parents=True)
    (half / "meta" / "info.json").write_text("{}")
    dead = subprocess.Popen(["true"])
    dead.wait()
    orphan = tmp_path / "datasets" / f".p0.partial-{dead.pid}"
    orphan.mkdir()
    path = ensure_demo_dataset(tmp_path, "p0", **TINY)
    assert LeRobotDatasetMetadata(demo_repo_id("p0"), root=path).total_episodes == TINY["episodes"]
    assert sorted(p.name for p in path.parent.iterdir()) == ["p0"]


def test_unknown_demo_name_is_refused(tmp_path: Path) -> None:
    with pytest.raises(Zk0Error, match="demo dataset 'train'.*'p0', 'p1', ... and 'eval'"):
        ensure_demo_dataset(tmp_path, "train", **TINY)


def test_demo_layout_matches_so100(small_demo: DemoPaths) -> None:
    assert [p.name for p in small_demo.participant_datasets] == ["p0", "p1"]
    meta = LeRobotDatasetMetadata(demo_repo_id("p0"), root=small_demo.participant_datasets[0])
    assert meta.fps == DEMO_FPS
    assert meta.robot_type == "so100_follower"
    assert meta.total_episodes == 3 and meta.total_frames == 60
    for key in ("observation.state", "action"):
        assert meta.features[key]["shape"] == (6,)
        assert meta.features[key]["names"] == JOINT_NAMES
    assert meta.video_keys == [CAMERA_KEY]
    assert meta.features[CAMERA_KEY]["shape"] == (64, 64, 3)


def test_participants_differ_in_colour_and_eval_draws_from_their_union(small_demo: DemoPaths) -> None:
    def colours(path: Path, name: str) -> set[str]:
        tasks = LeRobotDatasetMetadata(demo_repo_id(name), root=path).tasks.index
        return {c for c in COLOURS for task in tasks if f" {c} " in task}

    p0, p1 = (colours(p, f"p{i}") for i, p in enumerate(small_demo.participant_datasets))
    assert len(p0) == 1 and len(p1) == 1 and p0 != p1
    assert colours(small_demo.eval_dataset, "eval") <= p0 | p1


def test_actions_close_the_gap_to_a_fixed_target(small_demo: DemoPaths) -> None:
    """Learnable: within an episode every action moves a fixed share of the way to one target."""
    dataset = _read(small_demo.eval_dataset, "eval")
    states, actions = _episode_arrays(dataset, 0)
    implied_targets = states + (actions - states) / GAIN
    spread = implied_targets[:, :5].std(axis=0)
    assert np.all(spread < 0.2 * np.abs(actions[0] - states[0])[:5].max() / GAIN)
    steps = np.abs(actions - states).sum(axis=1)
    assert steps[-1] < 0.5 * steps[0], "the arm converges"


def test_cached_demo_is_cheap(small_demo: DemoPaths, small_demo_root: Path) -> None:
    again = ensure_demo(small_demo_root, **SMALL_DEMO)
    assert again == small_demo


def test_tiny_smolvla_computes_a_finite_loss_on_the_demo(small_demo: DemoPaths, small_demo_root: Path):
    ref = resolve_spec("demo:p0", small_demo_root)
    meta = LeRobotDatasetMetadata(ref.repo_id, root=ref.root)
    cfg = SmolVLAConfig(
        vlm_model_name=str(small_demo.vlm_dir),
        load_vlm_weights=False,
        resize_imgs_with_padding=(VLM_IMAGE_SIZE, VLM_IMAGE_SIZE),
        num_vlm_layers=VLM_TEXT_LAYERS,
        chunk_size=10,
        n_action_steps=10,
        device="cpu",
        push_to_hub=False,
    )
    policy = make_policy(cfg, ds_meta=meta)
    preprocessor, _ = make_pre_post_processors(cfg, dataset_stats=meta.stats)
    dataset = open_dataset(ref, episodes=[0, 1], delta_timestamps=resolve_delta_timestamps(cfg, meta))
    batch = next(iter(torch.utils.data.DataLoader(dataset, batch_size=4, shuffle=False)))
    assert batch["action"].shape == (4, 10, 6)
    assert isinstance(batch["task"][0], str)
    processed = preprocessor(batch)
    assert "observation.language.tokens" in processed
    loss, _ = policy.forward(processed)
    assert torch.isfinite(loss)
    loss.backward()
