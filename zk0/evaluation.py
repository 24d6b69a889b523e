"""Seeded evaluation: the flow-matching loss with fixed noise and time per batch, and the action error of
the predicted chunk from fixed noise, in a fixed batch order, so numbers compare across rounds, runs and
machines."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch.utils.data import DataLoader, Dataset

from zk0.config import Config, EvalConfig
from zk0.data import check_same_layout, dataset_names, open_source
from zk0.errors import Zk0Error
from zk0.policy import PolicyBundle
from zk0.records import RoundEntry
from zk0.training.runtime import build_runtime


@torch.no_grad()
def evaluate(
    bundle: PolicyBundle,
    dataset: Dataset,
    *,
    batch_size: int,
    max_batches: int,
    seed: int,
    num_workers: int = 0,
    action_error: bool = True,
) -> dict[str, float]:
    """Held-out loss and action MAE over `max_batches` batches (0 = all), each batch seeded by its index.

    `action_mae` is the mean absolute error of the predicted action chunk (denoised from seeded noise and
    unnormalized by the postprocessor) against the recorded actions, over in-episode steps, in the
    dataset's units.
    """
    policy = bundle.policy
    was_training = policy.training
    policy.eval()
    spawn = "spawn" if num_workers > 0 else None  # never fork a process that holds gRPC threads
    loader = DataLoader(
        dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers, multiprocessing_context=spawn
    )
    loss_sum, abs_sum, abs_count, samples, batches = 0.0, 0.0, 0, 0, 0
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    cfg = policy.config
    try:
        for index, raw in enumerate(loader):
            if max_batches and index >= max_batches:
                break
            batch = bundle.preprocessor(dict(raw))
            n = int(batch["action"].shape[0])
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(seed + index)
                loss, _ = policy.forward(dict(batch))
            loss_sum += float(loss) * n
            if action_error:
                noise = torch.randn(
                    (n, cfg.chunk_size, cfg.max_action_dim),
                    generator=torch.Generator().manual_seed(seed + index),
                ).to(batch["action"].device)
                policy.reset()
                predicted = bundle.postprocessor(policy.predict_action_chunk(dict(batch), noise=noise))
                recorded = raw["action"].to(predicted.dtype)
                valid = (
                    ~raw["action_is_pad"]
                    if "action_is_pad" in raw
                    else torch.ones(recorded.shape[:2], dtype=bool)
                )
                error = (predicted.cpu() - recorded).abs() * valid.unsqueeze(-1)
                abs_sum += float(error.sum())
                abs_count += int(valid.sum()) * recorded.shape[-1]
            samples += n
            batches += 1
    finally:
        policy.train(was_training)
    if samples == 0:
        raise ValueError("evaluation saw no samples")
    result = {"loss": loss_sum / samples, "samples": float(samples), "batches": float(batches)}
    if action_error:
        result["action_mae"] = abs_sum / max(abs_count, 1)
    return result


def evaluate_all(
    bundle: PolicyBundle, datasets: Mapping[str, Dataset], cfg: EvalConfig, *, num_workers: int = 0
) -> dict:
    """Every dataset's metrics, and a composite: their sample-weighted mean."""
    per = {
        name: evaluate(
            bundle,
            dataset,
            batch_size=cfg.batch_size,
            max_batches=cfg.batches,
            seed=cfg.seed,
            num_workers=num_workers,
            action_error=cfg.action_error,
        )
        for name, dataset in datasets.items()
    }
    return {"datasets": per, "composite": composite(per)}


def composite(per_dataset: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    total = sum(m["samples"] for m in per_dataset.values())
    keys = [k for k in ("loss", "action_mae") if all(k in m for m in per_dataset.values())]
    return {k: sum(m[k] * m["samples"] for m in per_dataset.values()) / total for k in keys}


def describe_eval(entry: RoundEntry) -> str:
    """One log line: composite and per-dataset loss (and action error) of an entry's evaluations."""
    parts = []
    for key, ev in (("eval", entry.eval), ("heldout", entry.heldout)):
        if ev is None:
            continue
        names = ", ".join(f"{n} {m['loss']:.4f}" for n, m in ev.datasets.items())
        mae = f", action MAE {ev.composite['action_mae']:.4f}" if "action_mae" in ev.composite else ""
        parts.append(f"{key} loss {ev.loss:.4f} ({names}){mae}")
    return "; ".join(parts)


def evaluation_setup(config: Config, *, device: str) -> tuple[PolicyBundle, dict[str, Dataset]]:
    """The coordinator's evaluation policy and datasets: the config's seeded initial model (the round-0
    global model), normalized with the first evaluation dataset's statistics."""
    dataset_names(config.data.eval)  # two specs of one name would overwrite each other's results
    sources = [open_source(spec, config) for spec in config.data.eval]
    if not sources:
        raise Zk0Error("data.eval: at least one evaluation dataset is required")
    check_same_layout(sources)
    built = build_runtime(config, sources, sources[0].meta.stats, device=device, heldout=None)
    return built.bundle, {s.name: dataset for s, dataset in zip(sources, built.datasets, strict=True)}
