"""What one update may weigh in a round: its distance from the base model, bounded absolutely and relative to
the round's median, and a finite aggregate before it becomes the global model.

A finite update can still wreck FedAvg: values of 3e38 overflow the fp32 accumulator (the global model becomes
Inf and every later round fails), and values of 1e30 drown every honest update. The distance ||update - base||
is what the participant itself reports as `update_norm`; honest updates of one round lie within a small
factor of each other. The decisions are pure functions; `update_distance` reads two models one tensor at a
time, so its memory stays flat whatever the model's size.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping

import torch

MEDIAN_RULE_MIN_UPDATES = 3  # below this a median says nothing about which update is the odd one
# Elements per step: the fp64 difference of one slice, never a whole tensor's; and at most ATen's grain size,
# so each op runs in the calling thread (see coordinator.aggregation._sliced on OpenMP teams on a busy host).
_SLICE = 32768


def update_distance(update: Mapping[str, torch.Tensor], base: Mapping[str, torch.Tensor]) -> float:
    """||update - base|| over every float tensor of `update`, in fp64 (inf if it overflows even that).

    Both mappings may be `SpoolReader`s: each tensor is loaded once and differenced slice by slice."""
    total = 0.0
    for name in update:
        value = update[name]
        if not value.is_floating_point():
            continue
        flat, anchor = value.reshape(-1), base[name].reshape(-1)
        for start in range(0, flat.numel(), _SLICE):
            diff = flat[start : start + _SLICE].double() - anchor[start : start + _SLICE].double()
            total += float(torch.dot(diff, diff))
    return math.sqrt(total)


def absolute_violation(distance: float, max_norm: float) -> str | None:
    """Why an update `distance` from its base is refused outright (None: it may count); 0 turns it off."""
    if max_norm > 0 and not distance <= max_norm:
        return f"distance {distance:.4g} from the base model exceeds federation.max_update_norm={max_norm:g}"
    return None


def median_outliers(distances: Mapping[str, float], factor: float) -> dict[str, str]:
    """{name: reason} for each update farther from the base than `factor` x the round's median distance.

    Applies from MEDIAN_RULE_MIN_UPDATES updates on (with two, neither is the odd one), and not when the
    median is 0 (most updates did not move: nothing to scale by); factor 0 is off."""
    if factor <= 0 or len(distances) < MEDIAN_RULE_MIN_UPDATES:
        return {}
    median = statistics.median(distances.values())
    if not median > 0:
        return {}
    bound = factor * median
    return {
        name: (
            f"distance {d:.4g} from the base model exceeds federation.update_norm_median_factor={factor:g} "
            f"x the round's median {median:.4g}"
        )
        for name, d in sorted(distances.items())
        if not d <= bound
    }


def farthest(distances: Mapping[str, float]) -> str:
    """The update to drop first when an aggregate is not finite: the farthest one (name breaks ties)."""
    return max(sorted(distances), key=lambda name: distances[name])


def non_finite_tensors(state: Mapping[str, torch.Tensor]) -> list[str]:
    """Names of the float tensors of `state` holding a NaN or an Inf (a model that must not be served)."""
    bad = []
    for name, tensor in state.items():
        if not tensor.is_floating_point():
            continue
        flat = tensor.reshape(-1)
        for start in range(0, flat.numel(), _SLICE):
            if not bool(torch.isfinite(flat[start : start + _SLICE]).all()):
                bad.append(name)
                break
    return bad


def screen(distances: Mapping[str, float], *, max_norm: float, factor: float) -> dict[str, str]:
    """{name: reason} for the updates a round must leave out before aggregating: beyond the absolute bound
    (an update kept from before a restart was never checked), then median outliers among the rest."""
    dropped = {}
    for name, distance in sorted(distances.items()):
        violation = absolute_violation(distance, max_norm)
        if violation is not None:
            dropped[name] = violation
    rest = {name: d for name, d in distances.items() if name not in dropped}
    return {**dropped, **median_outliers(rest, factor)}
