"""The centralized baseline: the trainer (zk0.training) on the union of every participant's data.

It uses a federated run's budget: the same samples (batches of participants x batch_size) over the same
optimizer steps (rounds x local_steps, in rounds of local_steps with the LR schedule restarting each round),
so the two compare like with like: every participant of a federated run steps in parallel with the others.
It is evaluated exactly as a federated run's coordinator evaluates its global model (the same evaluation
policy and normalization, from zk0.evaluation.evaluation_setup), so their numbers compare too, and it writes
the same reports: final/ with its model card, best/, and the charts.
"""

from __future__ import annotations

import logging
from pathlib import Path

from lerobot.datasets.compute_stats import aggregate_stats
from torch.utils.data import ConcatDataset

from zk0.charts import write_charts
from zk0.config import Config, config_to_toml
from zk0.data import (
    Source,
    check_same_layout,
    dataset_names,
    describe,
    open_source,
)
from zk0.errors import Zk0Error
from zk0.evaluation import describe_eval, evaluate_all, evaluation_setup
from zk0.normalization import with_shared
from zk0.payload import sha256_hex
from zk0.policy import (
    PolicyBundle,
    export_pretrained,
    load_trainable_state,
    resolve_device,
    trainable_state,
)
from zk0.records import Best, Evaluation, Hyperparameters, RoundEntry
from zk0.report import model_card
from zk0.reuse import reuse_run_dir
from zk0.rundir import RunDir
from zk0.tensors import encode_state
from zk0.training.datamodule import LeRobotDataModule
from zk0.training.lightning_module import RoundPlan, SmolVLAModule
from zk0.training.local_training import LocalTrainer
from zk0.training.runtime import build_runtime

log = logging.getLogger(__name__)

BEST_DIR = "best"  # as a federated run's


def run_centralized(
    config: Config, run_dir: Path, *, progress: bool = True, device: str | None = None
) -> list[RoundEntry]:
    """Train, evaluate after every round (and before the first), export final/ and best/ with a model card
    and charts; returns the metrics. `device` overrides train.device.

    No mid-run checkpoint: `run_dir` must hold no run, or an incomplete one of this config (which restarts
    from scratch), by the rule of `zk0.reuse.reuse_run_dir`, checked before any work."""
    reuse = reuse_run_dir(run_dir, config, "centralized")
    if reuse.action == "finished":
        raise Zk0Error(reuse.message)
    device = resolve_device(device or config.train.device)
    dataset_names(config.data.participants)  # two specs of one name would share every table row
    sources = [open_source(spec, config) for spec in config.data.participants]
    eval_sources = [open_source(spec, config) for spec in config.data.eval]
    check_same_layout(sources + eval_sources)
    run = RunDir.create(run_dir, config, kind="centralized")
    # The coordinator's evaluation policy (built first: it seeds like the training policy below, so both
    # start from the same initial model) scores every round's trained weights.
    eval_bundle, eval_sets = evaluation_setup(config, device=device)

    stats = aggregate_stats([s.meta.stats for s in sources])
    if config.data.normalization == "coordinator":  # as a federated run of this config would normalize
        stats = with_shared(stats, eval_sources[0].meta.stats)
    # seeded as a federated run of this config is: the same initial model
    built = build_runtime(config, sources, stats, device=device, heldout=config.data.heldout_episodes)
    bundle, heldout_sets = built.bundle, built.heldout

    datamodule = LeRobotDataModule(
        ConcatDataset(built.datasets),
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

    best: Best | None = None
    best_state: dict | None = None

    def evaluated(entry: RoundEntry) -> RoundEntry:
        nonlocal best, best_state
        state = trainable_state(bundle.policy)
        entry.version = sha256_hex(encode_state(state))
        if config.eval.due(entry.round, config.federation.rounds):
            workers = config.data.num_workers
            load_trainable_state(eval_bundle.policy, state)
            result = evaluate_all(eval_bundle, eval_sets, config.eval, num_workers=workers)
            entry.eval = Evaluation.from_json(result)
            if heldout_sets:  # each dataset's held-out episodes, normalized as it trained
                result = evaluate_all(bundle, heldout_sets, config.eval, num_workers=workers)
                entry.heldout = Evaluation.from_json(result)
            log.info("round %d: %s", entry.round, describe_eval(entry))
            if best is None or entry.eval.loss < best.loss:
                best = Best(entry.round, entry.version, entry.eval.loss)
                best_state = {k: v.detach().to("cpu", copy=True) for k, v in state.items()}
        if best is not None:
            entry.best = best  # a new Best replaces it, never changed in place
        return entry

    history = []
    try:  # an interrupt leaves metrics.jsonl whole up to the last completed round, its writers closed
        entry = evaluated(RoundEntry(round=0, steps=0))
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
            entry = RoundEntry(
                round=round_idx,
                steps=round_idx * steps_per_round,
                hyperparameters=Hyperparameters(lr=config.train.lr, mu=0.0, local_steps=steps_per_round),
                train=result.as_dict(),
            )
            entry = evaluated(entry)
            run.record(entry, step=round_idx)
            history.append(entry)
        _finish(config, run, (eval_bundle, eval_sets), sources, bundle, history, best, best_state)
        run.mark_finished()
    finally:
        run.close()
    log.info("wrote %s, %s and %s", run.final_dir, run.path / BEST_DIR, run.metrics_path)
    return history


def _finish(
    config: Config,
    run: RunDir,
    evaluation: tuple[PolicyBundle, dict],
    sources: list[Source],
    trained: PolicyBundle,
    history: list[RoundEntry],
    best: Best | None,
    best_state: dict | None,
) -> None:
    """As a federated run ends: final/ and best/ exported from the evaluation policy (so they normalize as
    they were scored), final/README.md, and the charts."""
    eval_bundle, eval_sets = evaluation
    load_trainable_state(eval_bundle.policy, trainable_state(trained.policy))
    export_pretrained(eval_bundle, run.final_dir)
    if best_state is not None:
        load_trainable_state(eval_bundle.policy, best_state)
        export_pretrained(eval_bundle, run.path / BEST_DIR)
    datasets = {s.name: describe(s.meta) for s in sources}
    card = model_card(
        config_toml=config_to_toml(config),
        entries=history,
        participants=datasets,
        eval_datasets={name: describe(d.meta) for name, d in eval_sets.items()},
        base_model=config.model.source,
        final_version=history[-1].version,
        best=best.to_json() if best is not None else None,
        centralized=True,
    )
    (run.final_dir / "README.md").write_text(card)
    write_charts(history, run.path, run="centralized run")
