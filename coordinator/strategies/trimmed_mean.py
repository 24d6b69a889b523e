"""Coordinate-wise trimmed mean (Yin et al., 2018): for each parameter, drop the strategy.trim_fraction
largest and smallest values over the round's updates and average the rest. With trim_fraction = b, up to
b x P hostile updates are cut off at every coordinate. Unweighted, like the median."""

from __future__ import annotations

import math

from coordinator.strategies.base import (
    Aggregate,
    RoundUpdates,
    State,
    Strategy,
    cast_like,
    compute_dtype,
    server_step,
    sorted_stack,
    tensorwise,
)


def trimmed_count(count: int, fraction: float) -> int:
    """How many values are cut from each end: floor(fraction x count), leaving at least one."""
    return min(math.floor(fraction * count), (count - 1) // 2)


class TrimmedMean(Strategy):
    name = "trimmed_mean"

    def aggregate(self, round_updates: RoundUpdates) -> Aggregate:
        count = len(round_updates.updates)
        cut = trimmed_count(count, self.options.trim_fraction)
        result: State = {}
        for spec, tensors, _ in tensorwise(round_updates):
            ordered = sorted_stack(tensors, compute_dtype(spec))
            result[spec.name] = cast_like(spec, ordered[cut : count - cut].mean(dim=0))
        stats = {"trimmed_each_end": cut, "updates": count}
        return Aggregate(server_step(round_updates, result, self.config.federation.server_lr), stats)
