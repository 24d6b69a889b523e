"""Per-round LR schedules: each round starts afresh from the LR the coordinator sent."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.optim.lr_scheduler import CosineAnnealingLR, CosineAnnealingWarmRestarts, ReduceLROnPlateau

from zk0.config import SCHEDULES

PLATEAU_MONITOR = "train/policy_loss"


@dataclass(frozen=True)
class ScheduleSpec:
    name: str
    steps: int
    min_lr: float
    restart_steps: int
    plateau_factor: float
    plateau_patience: int


def make_scheduler(optimizer: torch.optim.Optimizer, spec: ScheduleSpec) -> dict:
    """A Lightning `lr_scheduler` dict stepping every optimizer step, over `spec.steps` steps."""
    if spec.name == "cosine":
        scheduler = CosineAnnealingLR(optimizer, T_max=spec.steps, eta_min=spec.min_lr)
    elif spec.name == "cosine_restarts":
        scheduler = CosineAnnealingWarmRestarts(optimizer, T_0=spec.restart_steps, eta_min=spec.min_lr)
    elif spec.name == "plateau":
        scheduler = ReduceLROnPlateau(
            optimizer, factor=spec.plateau_factor, patience=spec.plateau_patience, min_lr=spec.min_lr
        )
        return {"scheduler": scheduler, "interval": "step", "monitor": PLATEAU_MONITOR}
    else:
        raise ValueError(f"unknown schedule {spec.name!r}; expected one of {SCHEDULES}")
    return {"scheduler": scheduler, "interval": "step"}
