"""What a command writes where, with its output redirected as in a log file or a pipe: results on stdout,
logs on stderr, no progress bars, each library banner at most once."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import set_args, small_overrides

ROOT = Path(__file__).parent.parent
ZK0 = str(Path(sys.executable).parent / "zk0")
LOG_LINE = re.compile(r"^\d\d:\d\d:\d\d (DEBUG|INFO|WARNING|ERROR) ")


@pytest.mark.slow
def test_simulate_redirected_keeps_stdout_for_results_and_logs_one_line_per_round(tmp_path):
    run = tmp_path / "run"
    overrides = small_overrides(
        tmp_path / "demo",  # generated here: the video encoding is part of the run
        "demo.episodes=2",
        "demo.frames_per_episode=20",
        'data.participants=["demo:p0", "demo:p1"]',
        "federation.min_participants=2",
        "federation.min_updates=2",
        "data.heldout_episodes=0",
        "federation.rounds=2",
    )
    command = [ZK0, "simulate", "--config", str(ROOT / "configs" / "demo.toml"), "--run-dir", str(run)]
    command += ["--device", "cpu", *set_args(overrides)]
    # A fresh datasets cache, as on a fresh clone: datasets converts the parquet files, with a progress bar
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    env["HF_DATASETS_CACHE"] = str(tmp_path / "datasets-cache")
    out, err = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    with out.open("w") as stdout, err.open("w") as stderr:  # files, not terminals: no progress bars
        code = subprocess.run(command, env=env, stdout=stdout, stderr=stderr, timeout=900).returncode
    stdout_text, stderr_text = out.read_text(), err.read_text()
    assert code == 0, stderr_text[-3000:]

    lines = stdout_text.splitlines()
    assert lines[:2] == ["", "global model on the held-out evaluation data:"], stdout_text
    assert lines[2].split()[:4] == ["round", "loss", "action", "MAE"], stdout_text
    assert [int(line.split()[0]) for line in lines[3:-1]] == [0, 1, 2], stdout_text
    assert lines[-1] == f"run directory: {run}"

    for text in (stdout_text, stderr_text):
        assert "\r" not in text and "it/s]" not in text, "a progress bar"
        assert "Using video codec" not in text
    assert stderr_text.count("Reducing the number of VLM layers") <= 1, stderr_text
    assert all(LOG_LINE.match(line) for line in stderr_text.splitlines()), stderr_text[-3000:]
    for name in ("p0", "p1"):
        for round_idx in (1, 2):
            pattern = rf"{name}: round {round_idx} update accepted: 2 steps, loss \d+\.\d+, \d+\.\ds$"
            assert len(re.findall(pattern, stderr_text, re.MULTILINE)) == 1, stderr_text[-3000:]
