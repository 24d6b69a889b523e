"""FedAvg (McMahan et al., 2017): the sample-weighted mean of the updates, with an optional server learning
rate (federation.server_lr). Folded one tensor at a time in participant-name order into an fp32 accumulator
(coordinator/aggregation.py), so the bytes do not depend on the order updates arrived in."""

from __future__ import annotations

from coordinator.aggregation import FedAvgAccumulator
from coordinator.strategies.base import Aggregate, RoundUpdates, State, Strategy, server_step


def weighted_mean(round_updates: RoundUpdates) -> State:
    """The sample-weighted mean of the round's updates, folded in participant-name order."""
    accumulator = FedAvgAccumulator(round_updates.manifest, reuse=round_updates.reuse)
    for name in sorted(round_updates.updates):
        path, weight = round_updates.updates[name]
        accumulator.add(path, weight)
    return accumulator.take_result()


class FedAvg(Strategy):
    name = "fedavg"

    def aggregate(self, round_updates: RoundUpdates) -> Aggregate:
        mean = weighted_mean(round_updates)
        return Aggregate(server_step(round_updates, mean, self.config.federation.server_lr))
