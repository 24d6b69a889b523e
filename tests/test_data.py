"""Dataset specs, the names they go by, validation (each rejection names the dataset and the problem), the
episode split and the description sent at join."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from lerobot.datasets import LeRobotDataset

from zk0.data import (
    dataset_name,
    dataset_names,
    describe,
    load_metadata,
    open_dataset,
    resolve_spec,
    split_episodes,
    validate,
)
from zk0.demo import CAMERA_KEY, DemoPaths, demo_features
from zk0.errors import Zk0Error

SO100 = {"expected_fps": 30, "state_dim": 6, "action_dim": 6}


def _copy(source: Path, destination: Path) -> Path:
    shutil.copytree(source, destination)
    return destination


def _dataset_without(tmp_path: Path, feature: str) -> Path:
    """A real two-frame dataset lacking one feature (no camera keeps it quick: nothing to encode)."""
    features = {k: v for k, v in demo_features().items() if k != feature and k != CAMERA_KEY}
    root = tmp_path / f"no-{feature}"
    dataset = LeRobotDataset.create(
        "local/x", 30, features, root=root, use_videos=False, video_backend="pyav"
    )
    for _ in range(2):
        frame = {key: np.zeros(6, np.float32) for key in features}
        dataset.add_frame({**frame, "task": "nothing"})
    dataset.save_episode()
    dataset.finalize()
    return root


def _shift_timestamp(root: Path, *, episode: int, frame: int, seconds: float) -> None:
    path = next((root / "data").rglob("*.parquet"))
    table = pq.read_table(path)
    timestamps = table.column("timestamp").to_numpy().copy()
    row = int(
        np.flatnonzero(
            (table.column("episode_index").to_numpy() == episode)
            & (table.column("frame_index").to_numpy() == frame)
        )[0]
    )
    timestamps[row] += seconds
    column = table.schema.get_field_index("timestamp")
    table = table.set_column(
        column, table.schema.field(column), pa.array(timestamps, table.schema.field(column).type)
    )
    pq.write_table(table, path)


def test_demo_spec(demo_root: Path) -> None:
    ref = resolve_spec("demo:p1", demo_root)
    assert (ref.repo_id, ref.root, ref.is_demo, ref.is_hub) == (
        "zk0-demo/p1",
        demo_root / "datasets" / "p1",
        True,
        False,
    )


def test_local_directory_spec_wins_over_a_hub_lookalike(
    small_demo: DemoPaths, tmp_path: Path, monkeypatch
) -> None:
    _copy(small_demo.participant_datasets[0], tmp_path / "acme" / "robot")
    monkeypatch.chdir(tmp_path)
    ref = resolve_spec("acme/robot", tmp_path / "unused")
    assert (ref.repo_id, ref.root, ref.is_demo, ref.is_hub) == (
        "local/robot",
        Path("acme/robot"),
        False,
        False,
    )


def test_hub_spec(tmp_path: Path) -> None:
    ref = resolve_spec("lerobot/svla_so100_pickplace", tmp_path)
    assert (ref.repo_id, ref.root, ref.is_hub) == ("lerobot/svla_so100_pickplace", None, True)


@pytest.mark.parametrize("spec", ["not a dataset", "a/b/c", "", "demo:train"])
def test_bad_spec_names_itself_and_the_accepted_forms(spec: str, tmp_path: Path) -> None:
    with pytest.raises(Zk0Error, match=f"dataset spec '{spec}'") as caught:
        resolve_spec(spec, tmp_path)
    assert "p0, p1, ..." in str(caught.value)


def test_directory_without_metadata_is_refused(tmp_path: Path) -> None:
    with pytest.raises(Zk0Error, match="has no meta/info.json"):
        resolve_spec(str(tmp_path), tmp_path)


def test_hub_dataset_while_offline_is_one_clear_line(tmp_path: Path) -> None:
    ref = resolve_spec("zk0-tests/no-such-dataset", tmp_path)
    with pytest.raises(Zk0Error) as caught:
        load_metadata(ref)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(
        "dataset 'zk0-tests/no-such-dataset' is on the Hugging Face hub, which is unreachable"
    )
    assert "HF_HUB_OFFLINE" in message and "use a local path" in message


def test_demo_not_generated_yet(tmp_path: Path) -> None:
    with pytest.raises(Zk0Error, match="dataset 'demo:p0': no LeRobot dataset at .*generate the demo first"):
        load_metadata(resolve_spec("demo:p0", tmp_path))


def test_old_format_is_refused(small_demo: DemoPaths, tmp_path: Path) -> None:
    root = _copy(small_demo.participant_datasets[0], tmp_path / "old")
    info_path = root / "meta" / "info.json"
    info_path.write_text(json.dumps({**json.loads(info_path.read_text()), "codebase_version": "v2.1"}))
    with pytest.raises(Zk0Error, match="is in LeRobot format v2.1, zk0 needs v3.0"):
        load_metadata(resolve_spec(str(root), tmp_path))


def test_incomplete_local_dataset_does_not_send_the_user_to_the_hub(
    small_demo: DemoPaths, tmp_path: Path
) -> None:
    root = _copy(small_demo.participant_datasets[0], tmp_path / "broken")
    shutil.rmtree(root / "meta" / "episodes")
    with pytest.raises(Zk0Error, match=r"^dataset '.*broken' is incomplete: meta/episodes missing$"):
        load_metadata(resolve_spec(str(root), tmp_path))


def test_missing_frames_of_a_local_dataset_do_not_send_the_user_to_the_hub(
    small_demo: DemoPaths, tmp_path: Path
) -> None:
    root = _copy(small_demo.participant_datasets[0], tmp_path / "no-videos")
    shutil.rmtree(root / "videos")
    ref = resolve_spec(str(root), tmp_path)
    with pytest.raises(Zk0Error, match=r"^dataset '.*no-videos' is incomplete: lerobot found a file missing"):
        open_dataset(ref, episodes=None, delta_timestamps=None)


def test_demo_dataset_is_valid(small_demo: DemoPaths, small_demo_root: Path) -> None:
    ref = resolve_spec("demo:p0", small_demo_root)
    validate(load_metadata(ref), ref, **SO100)


@pytest.mark.parametrize(
    ("overrides", "problem"),
    [
        ({"expected_fps": 15}, "fps is 30, expected 15"),
        ({"state_dim": 7}, r"observation.state has shape \(6,\), expected \(7,\)"),
        ({"action_dim": 14}, r"action has shape \(6,\), expected \(14,\)"),
    ],
)
def test_mismatches_are_refused(
    small_demo: DemoPaths, small_demo_root: Path, overrides: dict, problem: str
) -> None:
    ref = resolve_spec("demo:p1", small_demo_root)
    with pytest.raises(Zk0Error, match=f"^dataset 'demo:p1': {problem}$"):
        validate(load_metadata(ref), ref, **{**SO100, **overrides})


def test_missing_camera_is_refused(tmp_path: Path) -> None:
    root = _dataset_without(tmp_path, CAMERA_KEY)
    ref = resolve_spec(str(root), tmp_path)
    with pytest.raises(
        Zk0Error, match=r"dataset '.*no-observation.images.front': missing required feature\(s\) a "
    ):
        validate(load_metadata(ref), ref, **SO100)


def test_missing_state_is_refused(tmp_path: Path) -> None:
    root = _dataset_without(tmp_path, "observation.state")
    ref = resolve_spec(str(root), tmp_path)
    with pytest.raises(
        Zk0Error, match=r"missing required feature\(s\) observation.state, a camera"
    ) as caught:
        validate(load_metadata(ref), ref, **SO100)
    assert str(caught.value).endswith("(it has: action)")


def test_out_of_sync_timestamps_are_refused(small_demo: DemoPaths, tmp_path: Path) -> None:
    root = _copy(small_demo.participant_datasets[0], tmp_path / "drifting")
    _shift_timestamp(root, episode=1, frame=5, seconds=0.1)
    ref = resolve_spec(str(root), tmp_path)
    with pytest.raises(
        Zk0Error,
        match=r"dataset '.*drifting': timestamps out of sync in episode 1: frame 5 has timestamp 0.2667s",
    ):
        validate(load_metadata(ref), ref, **SO100)


def test_drift_within_one_frame_is_tolerated(small_demo: DemoPaths, tmp_path: Path) -> None:
    root = _copy(small_demo.participant_datasets[0], tmp_path / "jitter")
    _shift_timestamp(root, episode=2, frame=3, seconds=0.02)
    ref = resolve_spec(str(root), tmp_path)
    validate(load_metadata(ref), ref, **SO100)


@pytest.mark.parametrize(
    ("total", "heldout", "expected"),
    [(5, 0, ([0, 1, 2, 3, 4], [])), (5, 2, ([0, 1, 2], [3, 4])), (2, 1, ([0], [1])), (1, 0, ([0], []))],
)
def test_split_holds_out_the_last_episodes(total: int, heldout: int, expected: tuple) -> None:
    assert split_episodes(total, heldout) == expected


@pytest.mark.parametrize(("total", "heldout"), [(5, 5), (5, 6), (5, -1), (0, 0)])
def test_split_refuses_impossible_holdouts(total: int, heldout: int) -> None:
    with pytest.raises(Zk0Error, match=f"cannot hold out {heldout} of {total} episodes"):
        split_episodes(total, heldout)


def test_open_dataset_selects_episodes(small_demo: DemoPaths, small_demo_root: Path) -> None:
    ref = resolve_spec("demo:eval", small_demo_root)
    dataset = open_dataset(ref, episodes=[1], delta_timestamps=None)
    assert len(dataset) == 20
    item = dataset[0]
    assert int(item["episode_index"]) == 1
    assert item[CAMERA_KEY].shape == (3, 64, 64)
    assert isinstance(item["task"], str)


@pytest.mark.parametrize(
    "spec",
    ["/nonexistent/zk0/dataset", "./missing_dataset", "../missing_dataset", "~/zk0-missing-dataset", "a/b/c"],
)
def test_a_missing_path_is_said_not_to_exist(spec: str, tmp_path: Path) -> None:
    with pytest.raises(Zk0Error) as caught:
        resolve_spec(spec, tmp_path)
    message = str(caught.value)
    assert message.startswith(f"dataset spec '{spec}': no such directory, ")
    assert "does not exist" in message and "hub" not in message.split(";")[0]


def test_a_mistyped_relative_path_is_not_blamed_on_the_hub(tmp_path: Path, monkeypatch) -> None:
    """data/ exists here, data/my_datset does not: a typo of a local path, not a hub repo id."""
    (tmp_path / "data" / "my_dataset").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(Zk0Error, match="dataset spec 'data/my_datset': no such directory, .* does not exist"):
        resolve_spec("data/my_datset", tmp_path / "demo")
    assert resolve_spec("lerobot/svla_so100_pickplace", tmp_path / "demo").is_hub  # no lerobot/ here


def test_a_file_is_not_a_dataset(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(Zk0Error, match="is a file, not a LeRobot dataset directory"):
        resolve_spec(str(tmp_path / "notes.txt"), tmp_path)


@pytest.mark.parametrize(
    ("spec", "name"),
    [
        ("demo:p0", "p0"),
        ("demo:eval", "eval"),
        ("lerobot/svla_so100_pickplace", "svla_so100_pickplace"),
        ("/data/run-3", "run-3"),
        ("/data/run-3/", "run-3"),
        ("./my dataset", "my-dataset"),
        ("~/robots/arm#2", "arm-2"),
        ("..", "participant"),
        ("/data/" + "x" * 100, "x" * 64),
    ],
)
def test_a_spec_goes_by_its_last_component(spec: str, name: str) -> None:
    """One derivation for a participant's default name and a dataset's key: never a path, always a valid
    participant name (1-64 of letters, digits, '_', '.', '-')."""
    assert dataset_name(spec) == name


def test_two_specs_of_one_name_are_refused() -> None:
    assert dataset_names(["demo:p0", "demo:p1", "lerobot/p2"]) == ["p0", "p1", "p2"]
    with pytest.raises(Zk0Error, match="'acme/robot' and '/data/robot' would both be named 'robot'"):
        dataset_names(["demo:p0", "acme/robot", "/data/robot"])


def test_the_description_is_the_datasets_shape(small_demo: DemoPaths, small_demo_root: Path) -> None:
    meta = load_metadata(resolve_spec("demo:p0", small_demo_root))
    described = describe(meta)
    assert json.loads(json.dumps(described)) == described  # plain data: it crosses the wire and the card
    assert (described["repo_id"], described["episodes"], described["frames"], described["fps"]) == (
        "zk0-demo/p0",
        3,
        60,
        30.0,
    )
    assert described["features"]["observation.state"] == {"dtype": "float32", "shape": [6]}
    assert set(described["features"]) == set(meta.features)
