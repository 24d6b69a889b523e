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
from collections.abc import Callable, Mapping
from pathlib import Path

import torch

from zk0.spool import SpoolReader
from zk0.tensors import Manifest, TensorSpec, torch_dtype

# ATen runs an elementwise op in the calling thread when it has at most this many elements (its grain size).
_SERIAL_SLICE = 32768


def _sliced(out: torch.Tensor, op: Callable[..., object], *inputs: torch.Tensor) -> torch.Tensor:
    """`op(out, *inputs)`, an elementwise op writing into `out`, applied slice by slice: the same values as
    one call on the whole tensors, computed in the calling thread.

    One call on a large tensor starts an OpenMP team, and on a busy host each such parallel region waits for
    a descheduled helper thread: folding 4 updates of 400 MB took 5-7 s instead of 0.3 s on a loaded 2-core
    machine. Elementwise kernels give each element the same value however the range is split.
    """
    flat_out = out.view(-1)
    flat_inputs = [tensor.reshape(-1) for tensor in inputs]
    for start in range(0, flat_out.numel(), _SERIAL_SLICE):
        end = start + _SERIAL_SLICE
        op(flat_out[start:end], *(flat[start:end] for flat in flat_inputs))
    return out


def _accumulator_dtype(dtype_name: str) -> torch.dtype:
    """fp32 for float tensors (bf16/fp16/fp32 sum exactly enough); fp64 where fp32 would lose digits."""
    dtype = torch_dtype(dtype_name)
    if dtype.is_floating_point and dtype.itemsize <= 4:
        return torch.float32
    return torch.float64


def reusable_sums(mean: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The tensors of a `take_result()` another accumulator can sum into (fp32/fp64 ones are the sums)."""
    return {name: tensor for name, tensor in mean.items() if tensor.dtype in (torch.float32, torch.float64)}


class FedAvgAccumulator:
    """Sum of weight * update and sum of weights, per tensor of the manifest; thread-safe `add`."""

    def __init__(self, manifest: Manifest, *, reuse: Mapping[str, torch.Tensor] | None = None) -> None:
        """`reuse`: tensors this accumulator may zero and sum into where their dtype and shape fit (e.g. the
        previous round's `take_result()`), instead of allocating (and first touching) a model's worth."""
        self.manifest = manifest
        self.count = 0
        self.total_weight = 0.0
        self._sums: dict[str, torch.Tensor] = {}
        self._spare = dict(reuse or {})
        self._broken: str | None = None
        self._taken = False
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
            if self._taken:
                raise RuntimeError("accumulator emptied by take_result()")
            if self._broken is not None:
                raise RuntimeError(f"accumulator unusable after a failed add: {self._broken}")
            try:
                if not self._sums:  # all up front: interleaved with the reads, the heap would fragment (2x)
                    self._sums = {spec.name: self._zeros(spec) for spec in self.manifest}
                for spec in self.manifest:
                    fold = lambda a, t: a.add_(t.to(a.dtype), alpha=weight)  # noqa: E731
                    _sliced(self._sums[spec.name], fold, update[spec.name])
            except BaseException as err:
                self._broken = f"{type(err).__name__}: {err}"
                raise
            self.count += 1
            self.total_weight += weight

    def _zeros(self, spec: TensorSpec) -> torch.Tensor:
        dtype = _accumulator_dtype(spec.dtype)
        spare = self._spare.pop(spec.name, None)
        if (
            spare is None
            or spare.dtype != dtype
            or tuple(spare.shape) != spec.shape
            or not spare.is_contiguous()
        ):
            return torch.zeros(spec.shape, dtype=dtype)
        return _sliced(spare, torch.Tensor.zero_)

    def result(self) -> dict[str, torch.Tensor]:
        """The weighted mean, each tensor cast back to its manifest dtype (integers rounded to nearest)."""
        with self._lock:
            self._check_result()
            mean = {}
            for spec in self.manifest:
                total = self._sums[spec.name]
                value = _sliced(
                    torch.empty_like(total), lambda v, t: torch.div(t, self.total_weight, out=v), total
                )
                mean[spec.name] = self._mean(spec, value)
            return mean

    def take_result(self) -> dict[str, torch.Tensor]:
        """`result()`, computed in the sums' own memory (no second model's worth), emptying the accumulator.

        Same values as `result()`: the same division, done in place; fp32 tensors are the sums themselves.
        """
        with self._lock:
            self._check_result()
            self._taken = True
            return {
                spec.name: self._mean(
                    spec, _sliced(self._sums.pop(spec.name), lambda v: v.div_(self.total_weight))
                )
                for spec in self.manifest
            }

    def _check_result(self) -> None:
        if self._taken:
            raise RuntimeError("accumulator emptied by take_result()")
        if self._broken is not None:
            raise RuntimeError(f"accumulator unusable after a failed add: {self._broken}")
        if self.count == 0:
            raise RuntimeError("no updates to aggregate")

    @staticmethod
    def _mean(spec: TensorSpec, value: torch.Tensor) -> torch.Tensor:
        """`value` (a fresh sum / total) cast to the manifest dtype, integers rounded to nearest first."""
        dtype = torch_dtype(spec.dtype)
        if not (dtype.is_floating_point or dtype.is_complex):
            _sliced(value, torch.Tensor.round_)
        if dtype == value.dtype:
            return value
        return _sliced(torch.empty(value.shape, dtype=dtype), torch.Tensor.copy_, value)


def apply_server_lr(
    previous: Mapping[str, torch.Tensor], mean: Mapping[str, torch.Tensor], server_lr: float
) -> dict[str, torch.Tensor]:
    """previous + server_lr * (mean - previous), in fp32, cast back to each tensor's dtype.

    server_lr = 1 is plain FedAvg. Above 1 the server extrapolates along the round's averaged update, which
    non-IID participants shrink by pulling in different directions (FedAvg with a server learning rate, as
    in Reddi et al., "Adaptive Federated Optimization", 2021).
    """
    if server_lr == 1.0:
        return dict(mean)
    return {
        name: (previous[name].float() + server_lr * (value.float() - previous[name].float())).to(value.dtype)
        for name, value in mean.items()
    }
