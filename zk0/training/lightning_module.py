"""The LightningModule around lerobot's SmolVLAPolicy: lerobot's training step plus FedProx's proximal term.

With mu = 0 the step is exactly lerobot's `update_policy`: forward under the precision's autocast, backward,
clip the gradient norm at the preset's bound, AdamW step, scheduler step.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import lightning as L
import torch

from zk0.config import TrainConfig
from zk0.policy import PolicyBundle
from zk0.training.datamodule import BAD_FRAMES_KEY, BadFrameCounter
from zk0.training.proximal import distance, proximal_term, snapshot
from zk0.training.schedules import PLATEAU_MONITOR, ScheduleSpec, make_scheduler


@dataclass
class RoundPlan:
    """What one block of local steps trains with; a new plan restarts the LR schedule."""

    lr: float
    mu: float
    steps: int


@dataclass
class StepLog:
    policy_loss: list[float] = field(default_factory=list)
    proximal_loss: list[float] = field(default_factory=list)
    grad_norm: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    samples: int = 0


class SmolVLAModule(L.LightningModule):
    def __init__(self, bundle: PolicyBundle, train: TrainConfig, *, source: str) -> None:
        super().__init__()
        self.policy = bundle.policy
        self.preprocessor = bundle.preprocessor
        self.train_cfg = train
        self.trainable = [p for p in self.policy.parameters() if p.requires_grad]
        self.plan = RoundPlan(lr=train.lr, mu=0.0, steps=train.local_steps)
        self.anchor: list[torch.Tensor] | None = None
        self.bad_frames = BadFrameCounter(train.max_bad_batches, source)
        self.steps_log = StepLog()

    def start_round(self, plan: RoundPlan) -> None:
        """Take the current weights as the FedProx anchor and reset the per-round logs."""
        self.plan = plan
        self.anchor = snapshot(self.trainable) if plan.mu > 0 else None
        self.round_start = snapshot(self.trainable)
        self.steps_log = StepLog()

    def update_norm(self) -> float:
        return distance(self.trainable, self.round_start)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor | None:
        self.bad_frames.record(batch.pop(BAD_FRAMES_KEY, []))
        if not batch:
            return None
        batch = self.preprocessor(batch)
        policy_loss, _ = self.policy.forward(batch)
        loss = policy_loss
        prox_value = 0.0
        if self.anchor is not None:
            prox = proximal_term(self.trainable, self.anchor, self.plan.mu)
            loss = loss + prox
            prox_value = float(prox.detach())
        pl_value = float(policy_loss.detach())
        self.steps_log.policy_loss.append(pl_value)
        self.steps_log.proximal_loss.append(prox_value)
        self.steps_log.samples += int(batch["action"].shape[0])
        # The one Lightning-logged value: the progress bar and the plateau schedule read it. The rest is
        # kept in steps_log (logger=False), which costs nothing per step.
        self.log(PLATEAU_MONITOR, pl_value, on_step=True, prog_bar=True, batch_size=1)
        return loss

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        # Gradients are already unscaled here; clipping ourselves also yields the norm for the metrics.
        max_norm = self.train_cfg.grad_clip_norm if self.train_cfg.grad_clip_norm > 0 else float("inf")
        norm = torch.nn.utils.clip_grad_norm_(self.trainable, max_norm)
        self.steps_log.grad_norm.append(float(norm))
        self.steps_log.lr.append(optimizer.param_groups[0]["lr"])

    def configure_optimizers(self):
        preset = self.policy.config.get_optimizer_preset()
        preset.lr = self.plan.lr
        optimizer = preset.build(self.trainable)
        spec = ScheduleSpec(
            name=self.train_cfg.schedule,
            steps=self.plan.steps,
            min_lr=self.train_cfg.min_lr,
            restart_steps=self.train_cfg.restart_steps,
            plateau_factor=self.train_cfg.plateau_factor,
            plateau_patience=self.train_cfg.plateau_patience,
        )
        return {"optimizer": optimizer, "lr_scheduler": make_scheduler(optimizer, spec)}
