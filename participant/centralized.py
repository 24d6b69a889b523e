"""The centralized baseline: the participant's trainer on the union of every participant's data.

It uses a federated run's budget: the same samples (batches of participants x batch_size) over the same
optimizer steps (rounds x local_steps, in rounds of local_steps with the LR schedule restarting each round),
so the two compare like with like: every participant of a federated run steps in parallel with the others.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from lerobot.datasets.compute_stats import aggregate_stats
from lerobot.datasets.factory import resolve_delta_timestamps
from torch.utils.data import ConcatDataset

from participant.datamodule import LeRobotDataModule
from participant.lightning_module import RoundPlan, SmolVLAModule
from participant.local_training import LocalTrainer
from zk0.config import Config
from zk0.data import open_dataset
from zk0.evaluation import describe_eval, evaluate_all
from zk0.normalization import with_shared
from zk0.policy import build_policy, export_pretrained, resolve_device
from zk0.rundir import RunDir
from zk0.sources import check_same_layout, demo_root, open_source, training_split

log = logging.getLogger(__name__)


def run_centralized(config: Config, run_dir: Path, *, progress: bool = True) -> list[dict]:
    """Train, evaluate after every round (and before the first), export final/; returns the metrics."""
    device = resolve_device(config.train.device)
    sources = [open_source(spec, config) for spec in config.data.participants]
    eval_sources = [open_source(spec, config) for spec in config.data.eval]
    check_same_layout(sources + eval_sources)
    run = RunDir.create(run_dir, config)

    stats = aggregate_stats([s.meta.stats for s in sources])
    if config.data.normalization == "coordinator":  # as a federated run of this config would normalize
        stats = with_shared(stats, eval_sources[0].meta.stats)
    torch.manual_seed(config.seed)  # the same initial model as a federated run of this config
    bundle = build_policy(config.model, sources[0].meta, stats, device=device, demo_root=demo_root(config))
    delta = resolve_delta_timestamps(bundle.policy.config, sources[0].meta)

    train_sets, heldout_sets = [], {}
    for source in sources:
        train, held = training_split(source, heldout=config.data.heldout_episodes, delta_timestamps=delta)
        train_sets.append(train)
        if held is not None:
            heldout_sets[source.name] = held
    eval_sets = {s.name: open_dataset(s.ref, episodes=None, delta_timestamps=delta) for s in eval_sources}

    datamodule = LeRobotDataModule(
        ConcatDataset(train_sets),
        batch_size=config.train.batch_size * len(sources),
        num_workers=config.data.num_workers,
    )
    module = SmolVLAModule(bundle, config.train, source="centralized")
    trainer = LocalTrainer(
        module, datamodule, device=device, precision=config.train.precision, progress=progress
    )
    steps_per_round = config.train.local_steps
    log.info(
        "centralized: %d datasets, %d training frames, %d rounds x %d steps on %s (%s)",
        len(sources),
        len(datamodule.dataset),
        config.federation.rounds,
        steps_per_round,
        device,
        trainer.precision,
    )

    def evaluated(entry: dict) -> dict:
        if config.eval.due(entry["round"], config.federation.rounds):
            workers = config.data.num_workers
            entry["eval"] = evaluate_all(bundle, eval_sets, config.eval, num_workers=workers)
            if heldout_sets:
                entry["heldout"] = evaluate_all(bundle, heldout_sets, config.eval, num_workers=workers)
            log.info("round %d: %s", entry["round"], describe_eval(entry))
        return entry

    history = []
    try:  # an interrupt leaves metrics.jsonl whole up to the last completed round
        entry = evaluated({"round": 0, "steps": 0})
        run.record(entry, step=0)
        history.append(entry)
        for round_idx in range(1, config.federation.rounds + 1):
            plan = RoundPlan(lr=config.train.lr, mu=0.0, steps=steps_per_round)
            result = trainer.train_round(plan, seed=config.seed + round_idx)
            log.info(
                "round %d: %d steps, train loss %.4f, %.1fs",
                round_idx,
                result.steps,
                result.policy_loss,
                result.seconds,
            )
            entry = evaluated(
                {"round": round_idx, "steps": round_idx * steps_per_round, "train": result.as_dict()}
            )
            run.record(entry, step=round_idx)
            history.append(entry)
        export_pretrained(bundle, run.final_dir)
    finally:
        run.close()
    log.info("wrote %s and %s", run.final_dir, run.metrics_path)
    return history
