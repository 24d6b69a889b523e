"""Seeded evaluation: the flow-matching loss with fixed noise and time per batch and a fixed batch order,
so numbers compare across rounds, runs and machines."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset

from zk0.policy import PolicyBundle


@torch.no_grad()
def evaluate_loss(
    bundle: PolicyBundle,
    dataset: Dataset,
    *,
    batch_size: int,
    max_batches: int,
    seed: int,
    num_workers: int = 0,
) -> dict[str, float]:
    """Mean held-out loss over `max_batches` batches (0 = all), each with noise/time seeded by its index."""
    policy = bundle.policy
    was_training = policy.training
    policy.eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    total, samples, batches = 0.0, 0, 0
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    try:
        for index, batch in enumerate(loader):
            if max_batches and index >= max_batches:
                break
            batch = bundle.preprocessor(batch)
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(seed + index)
                loss, _ = policy.forward(batch)
            n = int(batch["action"].shape[0])
            total += float(loss) * n
            samples += n
            batches += 1
    finally:
        policy.train(was_training)
    if samples == 0:
        raise ValueError("evaluation saw no samples")
    return {"loss": total / samples, "samples": float(samples), "batches": float(batches)}
