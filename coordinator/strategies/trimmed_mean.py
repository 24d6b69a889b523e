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
    coordinatewise,
    server_step,
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
        result: State = {
            spec.name: coordinatewise(spec, tensors, lambda ordered: ordered[cut : count - cut].mean(dim=0))
            for spec, tensors, _ in tensorwise(round_updates)
        }
        stats = {"trimmed_each_end": cut, "updates": count}
        return Aggregate(server_step(round_updates, result, self.config.federation.server_lr), stats)
