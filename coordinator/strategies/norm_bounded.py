"""Norm-bounded FedAvg (Sun et al., 2019, "Can you really backdoor federated learning?"): each update's delta
from the base model is scaled down to an L2 norm of at most strategy.clip_norm before the sample-weighted
mean, so one participant moves the global model by at most its weight share x clip_norm. Updates farther
than federation.max_update_norm are refused at upload, as under every strategy.

The clipped mean is a FedAvg of the raw updates with weights w_i s_i plus the base model with the weight
the clipping took away (s_i = min(1, clip_norm / d_i)): one streaming pass, no delta held in memory.
"""

from __future__ import annotations

from coordinator.aggregation import FedAvgAccumulator
from coordinator.strategies.base import Aggregate, RoundUpdates, Strategy, server_step


def clip_scales(distances: dict[str, float], clip_norm: float) -> dict[str, float]:
    """Per participant, the factor its delta is scaled by: 1 within the bound, clip_norm / distance above."""
    return {name: 1.0 if d <= clip_norm else clip_norm / d for name, d in distances.items()}


class NormBoundedFedAvg(Strategy):
    name = "norm_bounded"

    def aggregate(self, round_updates: RoundUpdates) -> Aggregate:
        names = sorted(round_updates.updates)
        scales = clip_scales({n: round_updates.distances[n] for n in names}, self.options.clip_norm)
        total = sum(round_updates.updates[n][1] for n in names)
        accumulator = FedAvgAccumulator(round_updates.manifest, reuse=round_updates.reuse)
        for name in names:
            path, weight = round_updates.updates[name]
            accumulator.add(path, weight * scales[name])
        taken = total - sum(round_updates.updates[n][1] * scales[n] for n in names)
        if taken > 1e-12 * total:
            accumulator.add(round_updates.base, taken)
        mean = accumulator.take_result()
        stats = {"clip_norm": self.options.clip_norm, "clipped": {n: s for n, s in scales.items() if s < 1}}
        return Aggregate(server_step(round_updates, mean, self.config.federation.server_lr), stats)
