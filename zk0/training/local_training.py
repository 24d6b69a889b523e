"""Runs blocks of local steps ("rounds") on a model and dataset built once per process."""

from __future__ import annotations

import statistics
import sys
import threading
import time
import warnings
from dataclasses import asdict, dataclass

import lightning as L
import torch
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm

from zk0.interrupts import check
from zk0.training.datamodule import LeRobotDataModule
from zk0.training.lightning_module import RoundPlan, SmolVLAModule


@dataclass
class RoundResult:
    policy_loss: float
    proximal_loss: float
    grad_norm: float
    update_norm: float
    samples: int
    steps: int
    seconds: float
    lr_first: float
    lr_last: float

    def as_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in asdict(self).items()}


def resolve_precision(setting: str, device: str) -> str:
    """`auto` is bf16 autocast on CUDA (as lerobot trains SmolVLA) and plain fp32 on CPU."""
    if setting != "auto":
        return setting
    return "bf16-mixed" if device.startswith("cuda") else "32-true"


def trainer_device_args(device: str) -> dict:
    if device.startswith("cuda"):
        index = int(device.split(":")[1]) if ":" in device else 0
        return {"accelerator": "gpu", "devices": [index]}
    return {"accelerator": device, "devices": 1}


# SmolVLA keeps its frozen VLM in eval mode on purpose (lerobot's SmolVLMWithExpertModel.train does so).
warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode", module="lightning")
warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
# Lightning ends a loader's workers after every fit (each round is one), so persistent ones would not persist.
warnings.filterwarnings("ignore", message=r"Consider setting `persistent_workers=True`")


class StopOnEvent(L.Callback):
    """Ends a fit at the next batch once `stop` is set: how a training thread notices an interrupt (the
    signal itself only reaches the main thread). It raises `Interrupted`, which Lightning re-raises."""

    def __init__(self, stop: threading.Event) -> None:
        self.stop = stop

    def on_train_batch_start(self, *_args) -> None:
        check(self.stop)


class DeadlinePassed(Exception):
    """The round's deadline passed before local training finished: the coordinator would refuse the update."""


class StopAtDeadline(L.Callback):
    """Ends a fit before the next batch once `deadline` (time.monotonic()) has passed, raising
    `DeadlinePassed`: a straggler stops spending its device on an update that can no longer count and is
    free for the next round."""

    def __init__(self, deadline: float, steps: int) -> None:
        self.deadline = deadline
        self.steps = steps

    def on_train_batch_start(self, trainer: L.Trainer, *_args) -> None:
        if time.monotonic() >= self.deadline:
            raise DeadlinePassed(
                f"the round's deadline passed after {trainer.global_step} of {self.steps} steps"
            )


class StderrProgressBar(TQDMProgressBar):
    """Lightning's bar writes to stdout, which holds the results; ours goes to stderr with the logs."""

    def init_train_tqdm(self) -> Tqdm:
        return Tqdm(
            desc=self.train_description,
            position=(2 * self.process_position),
            disable=self.is_disabled,
            leave=True,
            dynamic_ncols=True,
            file=sys.stderr,
            smoothing=0,
            bar_format=self.BAR_FORMAT,
        )


def show_progress(requested: bool) -> bool:
    """Bars only for a person watching: asked for and stderr a terminal; otherwise one log line per round."""
    return requested and sys.stderr.isatty()


class LocalTrainer:
    """A fresh Lightning Trainer per round (so optimizer and LR schedule restart), same module and data."""

    def __init__(
        self,
        module: SmolVLAModule,
        datamodule: LeRobotDataModule,
        *,
        device: str,
        precision: str,
        progress: bool = True,
        stop: threading.Event | None = None,
    ) -> None:
        self.module = module
        self.datamodule = datamodule
        self.device = device
        self.precision = resolve_precision(precision, device)
        self.progress = show_progress(progress)
        self.stop = stop or threading.Event()

    def make_trainer(self, steps: int, deadline: float | None = None) -> L.Trainer:
        at_deadline = [StopAtDeadline(deadline, steps)] if deadline is not None else []
        return L.Trainer(
            max_steps=steps,
            max_epochs=-1,
            precision=self.precision,
            logger=False,
            enable_checkpointing=False,
            enable_model_summary=False,
            enable_progress_bar=self.progress,
            callbacks=[
                StopOnEvent(self.stop),
                *at_deadline,
                *([StderrProgressBar()] if self.progress else []),
            ],
            num_sanity_val_steps=0,
            limit_val_batches=0,
            **trainer_device_args(self.device),
        )

    def train_round(self, plan: RoundPlan, *, seed: int, deadline: float | None = None) -> RoundResult:
        """`plan.steps` steps; `deadline` (time.monotonic(), None: none) stops them with DeadlinePassed."""
        L.seed_everything(seed, workers=True, verbose=False)
        self.datamodule.set_seed(seed)
        self.module.start_round(plan)
        started = time.perf_counter()
        self.make_trainer(plan.steps, deadline).fit(self.module, datamodule=self.datamodule)
        seconds = time.perf_counter() - started
        logs = self.module.steps_log
        if not logs.policy_loss:
            raise RuntimeError("the round ran no training step")
        return RoundResult(
            policy_loss=statistics.fmean(logs.policy_loss),
            proximal_loss=statistics.fmean(logs.proximal_loss),
            grad_norm=statistics.fmean(logs.grad_norm) if logs.grad_norm else 0.0,
            update_norm=self.module.update_norm(),
            samples=logs.samples,
            steps=len(logs.policy_loss),
            seconds=seconds,
            lr_first=logs.lr[0] if logs.lr else plan.lr,
            lr_last=logs.lr[-1] if logs.lr else plan.lr,
        )

    @property
    def policy(self) -> torch.nn.Module:
        return self.module.policy
