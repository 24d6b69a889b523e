"""The LightningDataModule around LeRobot datasets, with bounded, logged skipping of undecodable frames."""

from __future__ import annotations

import logging
from typing import Any, NamedTuple

import av
import lightning as L
import torch
from lerobot.datasets.video_utils import FrameTimestampError
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.dataloader import default_collate

from zk0.errors import Zk0Error

log = logging.getLogger(__name__)

# What a frame that cannot be read raises: PyAV decode errors, lerobot's timestamp check, a vanished or
# truncated file (IndexError: lerobot indexes the container's first video stream, which a truncated file
# lacks), torchcodec's RuntimeError. Each is logged and counted against the bound; anything else propagates.
DECODE_ERRORS = (av.error.FFmpegError, FrameTimestampError, OSError, RuntimeError, IndexError)
BAD_FRAMES_KEY = "zk0.bad_frames"


class BadDataError(Zk0Error):
    """More undecodable frames than the configured bound: the data is broken, not unlucky."""


class BadFrame(NamedTuple):
    """A NamedTuple, not a dataclass: Lightning rebuilds the batch's containers when moving it to a device."""

    index: int
    error: str


class SkipBadFrames(Dataset):
    """Returns a BadFrame marker instead of raising, so the main process can count and bound the skips."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        try:
            return self.dataset[index]
        except DECODE_ERRORS as e:
            return BadFrame(index=index, error=f"{type(e).__name__}: {e}")


def collate_skipping(items: list[Any]) -> dict[str, Any]:
    good = [x for x in items if not isinstance(x, BadFrame)]
    batch = default_collate(good) if good else {}
    batch[BAD_FRAMES_KEY] = [x for x in items if isinstance(x, BadFrame)]
    return batch


class BadFrameCounter:
    """Counts skipped frames over the life of a process; past `limit` the run stops with a clear error."""

    def __init__(self, limit: int, source: str) -> None:
        self.limit = limit
        self.source = source
        self.count = 0

    def record(self, bad: list[BadFrame]) -> None:
        for frame in bad:
            self.count += 1
            log.warning("%s: skipping frame %d (%s)", self.source, frame.index, frame.error)
            if self.count > self.limit:
                raise BadDataError(
                    f"{self.source}: {self.count} undecodable frames, more than train.max_bad_batches="
                    f"{self.limit}; last was frame {frame.index}: {frame.error}"
                )


class LeRobotDataModule(L.LightningDataModule):
    """Training batches from one dataset (or a concatenation), reshuffled per round from the round's seed."""

    def __init__(self, dataset: Dataset, *, batch_size: int, num_workers: int) -> None:
        super().__init__()
        self.dataset = SkipBadFrames(dataset)
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = 0

    def set_seed(self, seed: int) -> None:
        self.seed = seed

    def train_dataloader(self) -> DataLoader:
        """Workers are spawned, never forked: the process holds gRPC and heartbeat threads that a fork would
        copy mid-call, and PyAV is not fork-safe (lerobot spawns too). They are not persistent: Lightning
        shuts a loader's workers down at the end of every fit, and each round is a fit of its own."""
        generator = torch.Generator().manual_seed(self.seed)
        return DataLoader(
            self.dataset,
            batch_size=self.batch_size,
            shuffle=True,
            drop_last=len(self.dataset) >= self.batch_size,
            num_workers=self.num_workers,
            persistent_workers=False,
            multiprocessing_context="spawn" if self.num_workers > 0 else None,
            collate_fn=collate_skipping,
            generator=generator,
        )
