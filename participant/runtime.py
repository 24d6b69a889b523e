"""What a participant builds once per process and what it says about its dataset: the policy, trainer and
datasets for the run's config (ParticipantRuntime), and the dataset description sent at join."""

from __future__ import annotations

import threading

from zk0.config import Config
from zk0.data import Source, describe
from zk0.evaluation import evaluate
from zk0.normalization import with_shared
from zk0.policy import frozen_fingerprint, trainable_state
from zk0.tensors import Manifest
from zk0.training.datamodule import LeRobotDataModule
from zk0.training.lightning_module import SmolVLAModule
from zk0.training.local_training import LocalTrainer
from zk0.training.runtime import build_runtime
from zk0.v1 import federation_pb2 as pb


class ParticipantRuntime:
    """Policy, trainer and datasets, built once from the run's config and this participant's dataset."""

    def __init__(
        self,
        config: Config,
        source: Source,
        device: str,
        progress: bool,
        shared_stats: dict | None,
        stop: threading.Event | None = None,
    ) -> None:
        self.config = config
        self.source = source
        stats = with_shared(source.meta.stats, shared_stats) if shared_stats else source.meta.stats
        built = build_runtime(config, [source], stats, device=device, heldout=config.data.heldout_episodes)
        self.bundle = built.bundle
        self.heldout = built.heldout.get(source.name)
        module = SmolVLAModule(self.bundle, config.train, source=source.spec)
        datamodule = LeRobotDataModule(
            built.datasets[0], batch_size=config.train.batch_size, num_workers=config.data.num_workers
        )
        self.trainer = LocalTrainer(
            module, datamodule, device=device, precision=config.train.precision, progress=progress, stop=stop
        )
        self.fingerprint = frozen_fingerprint(self.bundle.policy)
        self.manifest = Manifest.of(trainable_state(self.bundle.policy))  # what a task's model must match

    def evaluate(self) -> dict[str, float] | None:
        if self.heldout is None:
            return None
        cfg = self.config.eval
        return evaluate(
            self.bundle,
            self.heldout,
            batch_size=cfg.batch_size,
            max_batches=cfg.batches,
            seed=cfg.seed,
            action_error=cfg.action_error,
        )


def description(source: Source | None, spec: str) -> pb.DatasetDescription:
    """`zk0.data.describe` on the wire; before the run's config is known, a demo spec is only its spec."""
    if source is None:
        return pb.DatasetDescription(repo_id=spec)
    d = describe(source.meta)
    return pb.DatasetDescription(
        repo_id=d["repo_id"],
        features=[
            pb.FeatureSpec(name=k, dtype=v["dtype"], shape=v["shape"]) for k, v in d["features"].items()
        ],
        episodes=d["episodes"],
        frames=d["frames"],
        fps=d["fps"],
    )
