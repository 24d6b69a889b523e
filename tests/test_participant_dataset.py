"""A participant's own dataset: checked before it contacts the coordinator (through the real console script,
against a bare TCP listener that records whether anyone connected), and mapped onto the run's feature names
with --rename (a real dataset whose camera has another name trains through the real module)."""

from __future__ import annotations

import math
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from lerobot.datasets import LeRobotDataset

from participant.runtime import ParticipantRuntime, description
from zk0.config import load_config
from zk0.data import check_spec, open_source
from zk0.demo import CAMERA_KEY, demo_features
from zk0.demo_tasks import demo_tasks
from zk0.errors import Zk0Error
from zk0.rename import parse_rename
from zk0.training.lightning_module import RoundPlan

ROOT = Path(__file__).parent.parent
PARTICIPANT = str(Path(sys.executable).parent / "zk0-participant")
WRIST = "observation.images.wrist"


def dataset_with_camera(root: Path, camera: str | None, *, episodes: int = 2, frames: int = 12) -> Path:
    """A real LeRobot dataset shaped like the demo's, its camera named `camera` (stored as images: quick),
    or without one."""
    features = demo_features()
    image = {**features.pop(CAMERA_KEY), "dtype": "image"}
    if camera is not None:
        features[camera] = image
    dataset = LeRobotDataset.create("local/x", 30, features, root=root, use_videos=False)
    rng = np.random.default_rng(0)
    for _ in range(episodes):
        for _ in range(frames):
            dataset.add_frame(
                {
                    "observation.state": rng.standard_normal(6).astype(np.float32),
                    "action": rng.standard_normal(6).astype(np.float32),
                    "task": demo_tasks()[0],
                }
                | ({camera: rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)} if camera else {})
            )
        dataset.save_episode()
    dataset.finalize()
    return root


class Listener:
    """A bare TCP port counting connections: a participant that connects has contacted 'the coordinator'."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        self.sock.close()


@pytest.fixture
def listener():
    lst = Listener()
    yield lst
    lst.close()


def participate(port: int, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [PARTICIPANT, "--coordinator", f"127.0.0.1:{port}", "--insecure", "--give-up-after", "1", *args],
        cwd=ROOT,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.slow
@pytest.mark.parametrize("problem", ["missing", "no-camera", "bad-rename"])
def test_a_bad_dataset_is_one_line_before_contacting_anyone(listener, tmp_path, problem):
    if problem == "missing":
        args, needle = ["--dataset", str(tmp_path / "my_datset")], "does not exist"
    elif problem == "no-camera":
        root = dataset_with_camera(tmp_path / "ds", None, episodes=1, frames=2)
        args = ["--dataset", str(root)]
        needle = "missing required feature(s) a camera"
    else:
        root = dataset_with_camera(tmp_path / "ds", WRIST, episodes=1, frames=2)
        args = ["--dataset", str(root), "--rename", "observation.images.top=observation.images.front"]
        needle = "it has no observation.images.top"
    result = participate(listener.port, *args)
    assert result.returncode == 2, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("zk0-participant: error: ") and needle in lines[0], lines[0]
    assert listener.connections == 0


@pytest.mark.parametrize(
    ("items", "message"),
    [
        (["observation.images.top"], "expected OLD=NEW"),
        (["action=observation.x"], "action is not an observation key"),
        ([f"{WRIST}={WRIST}"], "to itself"),
        ([f"{WRIST}=observation.images.a", f"{WRIST}=observation.images.b"], "already renamed"),
        ([f"{WRIST}=observation.images.a", "observation.images.b=observation.images.a"], "two features"),
    ],
)
def test_bad_rename_arguments_are_refused(items, message):
    with pytest.raises(Zk0Error, match=message):
        parse_rename(items)


def test_renamed_camera_is_described_and_trains_under_the_runs_name(small_demo, demo_root, tmp_path):
    """The run's camera is observation.images.front; this dataset calls it wrist. With --rename the
    description sent at join, the policy's inputs and every batch use the run's name, and a step trains."""
    root = dataset_with_camera(tmp_path / "wrist_ds", WRIST)
    rename = parse_rename([f"{WRIST}={CAMERA_KEY}"])
    checked = check_spec(str(root), rename)
    assert {f.name for f in description(checked, str(root)).features} >= {CAMERA_KEY}
    assert WRIST not in {f.name for f in description(checked, str(root)).features}
    assert check_spec("demo:p0") is None  # the run's config generates demo datasets

    config = load_config(
        ROOT / "configs" / "demo.toml",
        [f'demo.root="{demo_root}"', "train.batch_size=2", 'train.device="cpu"', "eval.batches=1"],
    )
    source = open_source(str(root), config, rename)
    assert CAMERA_KEY in source.meta.features and WRIST not in source.meta.features
    runtime = ParticipantRuntime(config, source, "cpu", False, None)
    assert CAMERA_KEY in runtime.bundle.policy.config.input_features
    result = runtime.trainer.train_round(RoundPlan(lr=config.train.lr, mu=0.0, steps=1), seed=0)
    assert result.steps == 1 and math.isfinite(result.policy_loss)
    local_eval = runtime.evaluate()
    assert local_eval is not None and math.isfinite(local_eval["loss"])
