"""Streaming FedAvg: fold validated updates one tensor at a time into an fp32 accumulator.

The coordinator spools each accepted update to disk and folds it in through a `SpoolReader`, so its memory
holds the accumulator (about one model's worth in fp32) plus one tensor of one update, whatever the number
of participants.

FedProx on the server is exactly this weighted mean: its proximal term lives in each participant's local
objective, so mu only travels to the participants (in the TrainTask) and aggregation does not change.

The result depends on the order of `add` calls only through fp32 rounding; fold the spooled updates in a
canonical order (e.g. by participant id) when a round must be reproducible to the bit.
"""

import math
import threading
from collections.abc import Mapping
from pathlib import Path

import torch

from zk0.codec import Manifest, SpoolReader, torch_dtype


def _accumulator_dtype(dtype_name: str) -> torch.dtype:
    """fp32 for float tensors (bf16/fp16/fp32 sum exactly enough); fp64 where fp32 would lose digits."""
    dtype = torch_dtype(dtype_name)
    if dtype.is_floating_point and dtype.itemsize <= 4:
        return torch.float32
    return torch.float64


class FedAvgAccumulator:
    """Sum of weight * update and sum of weights, per tensor of the manifest; thread-safe `add`."""

    def __init__(self, manifest: Manifest) -> None:
        self.manifest = manifest
        self.count = 0
        self.total_weight = 0.0
        self._sums: dict[str, torch.Tensor] = {}
        self._broken: str | None = None
        self._lock = threading.Lock()

    def add(self, update: Mapping[str, torch.Tensor] | Path, weight: float) -> None:
        """Fold one update (a state dict, or the path of a spooled safetensors file) with weight > 0.

        Call it only on a validated update: a mismatch with the manifest raises ValueError before anything
        is folded, but a failure midway (e.g. a read error) leaves the accumulator unusable.
        """
        if not (math.isfinite(weight) and weight > 0):
            raise ValueError(f"weight must be finite and > 0, got {weight}")
        if isinstance(update, Mapping):
            self._add(update, weight)
            return
        with SpoolReader(Path(update)) as reader:
            self._add(reader, weight)

    def _add(self, update: Mapping[str, torch.Tensor], weight: float) -> None:
        actual = Manifest.of(update)
        if actual != self.manifest:
            raise ValueError("update does not match the manifest; validate it before adding")
        with self._lock:
            if self._broken is not None:
                raise RuntimeError(f"accumulator unusable after a failed add: {self._broken}")
            try:
                for spec in self.manifest:
                    tensor = update[spec.name]
                    acc = self._sums.get(spec.name)
                    if acc is None:
                        acc = self._sums[spec.name] = torch.zeros(
                            spec.shape, dtype=_accumulator_dtype(spec.dtype)
                        )
                    acc.add_(tensor.to(acc.dtype), alpha=weight)
            except BaseException as err:
                self._broken = f"{type(err).__name__}: {err}"
                raise
            self.count += 1
            self.total_weight += weight

    def result(self) -> dict[str, torch.Tensor]:
        """The weighted mean, each tensor cast back to its manifest dtype (integers rounded to nearest)."""
        with self._lock:
            if self._broken is not None:
                raise RuntimeError(f"accumulator unusable after a failed add: {self._broken}")
            if self.count == 0:
                raise RuntimeError("no updates to aggregate")
            mean = {}
            for spec in self.manifest:
                value = self._sums[spec.name] / self.total_weight
                dtype = torch_dtype(spec.dtype)
                if not (dtype.is_floating_point or dtype.is_complex):
                    value = value.round()
                mean[spec.name] = value.to(dtype)
            return mean
