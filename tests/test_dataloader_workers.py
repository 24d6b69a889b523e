"""DataLoader workers in a process that holds gRPC and heartbeat threads: spawned, never forked."""

from __future__ import annotations

import pytest
import torch
from conftest import small_config

from zk0.simulate import simulate
from zk0.training.datamodule import LeRobotDataModule


def test_workers_are_spawned():
    loader = LeRobotDataModule(torch.arange(8), batch_size=2, num_workers=2).train_dataloader()
    assert loader.multiprocessing_context.get_start_method() == "spawn"
    assert LeRobotDataModule(torch.arange(8), batch_size=2, num_workers=0).train_dataloader().num_workers == 0


@pytest.mark.slow
@pytest.mark.filterwarnings("error:This process .* is multi-threaded, use of fork:DeprecationWarning")
def test_a_participant_round_with_dataloader_workers(demo_root, tmp_path):
    """A real round over gRPC (participant thread, heartbeats, coordinator) with a worker per loader."""
    config = small_config(
        demo_root,
        'data.participants=["demo:p0"]',
        "federation.min_participants=1",
        "federation.min_updates=1",
        "data.num_workers=1",
        "train.local_steps=3",
        "federation.round_timeout_s=300",
        "federation.join_timeout_s=300",
    )
    history = simulate(config, tmp_path / "run", device="cpu", progress=False)
    (entry,) = [e for e in history if e.round == 1]
    assert entry.participants.accepted == ["p0"]
