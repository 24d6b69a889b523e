"""The `zk0` console script as a user runs it: real processes, real files."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import set_args, small_overrides

from zk0.config import load_config
from zk0.policy import load_exported

ROOT = Path(__file__).parent.parent
ZK0 = str(Path(sys.executable).parent / "zk0")


def zk0(*args: str, cwd: Path = ROOT, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([ZK0, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_real_config_offline_fails_fast_with_one_line(tmp_path):
    result = zk0("centralized", "--config", "configs/so100.toml", "--run-dir", str(tmp_path / "run"))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("zk0: error: dataset 'shaunkirby/record-test'")
    assert "hub" in lines[0]
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_bad_override_names_the_key(tmp_path):
    result = zk0("centralized", "--set", "train.bogus=1", "--run-dir", str(tmp_path / "run"))
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "zk0: error: train.bogus: unknown key (known: batch_size, device, grad_clip_norm, local_steps, lr, "
        "max_bad_batches, min_lr, plateau_factor, plateau_patience, precision, restart_steps, schedule)"
    )


@pytest.mark.slow
def test_centralized_demo_end_to_end(tmp_path):
    run = tmp_path / "run"
    overrides = small_overrides(
        tmp_path / "demo",  # a bigger demo of its own, on which a loss must fall
        "demo.episodes=4",
        "demo.frames_per_episode=40",
        "train.batch_size=8",
        "eval.batches=0",
        "federation.rounds=2",
        "train.local_steps=10",  # last: changed below
    )
    args = ["centralized", "--run-dir", str(run), "--no-progress", *set_args(overrides)]
    result = zk0(*args)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [entry["round"] for entry in lines] == [0, 1, 2]
    assert lines[-1]["steps"] == 2 * 10  # rounds x local_steps, in batches of participants x batch_size
    for key, names in (("eval", {"eval"}), ("heldout", {"p0", "p1", "p2"})):
        first, last = lines[0][key], lines[-1][key]
        assert set(first["datasets"]) == names
        for name in names:
            assert last["datasets"][name]["loss"] < first["datasets"][name]["loss"], (key, name)
        assert last["composite"]["action_mae"] < first["composite"]["action_mae"], key
    assert load_config(run / "config.toml").train.local_steps == 10
    assert any((run / "tensorboard").iterdir())
    assert "global model on the held-out evaluation data" in result.stdout
    bundle = load_exported(run / "final")
    assert bundle.policy.config.chunk_size == 10

    again = zk0(*args)  # a finished run is reported in one line, not redone
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"zk0: {run} holds this centralized run, finished" in again.stdout
    other = zk0(*args[:-1], "train.local_steps=11")
    assert other.returncode == 2
    assert "differing: train.local_steps" in other.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("command", [["--help"], ["centralized", "--help"], ["demo-data", "--help"]])
def test_help(command):
    assert zk0(*command).returncode == 0
