"""Coordinate-wise median (Yin et al., 2018): each parameter of the new model is the median of that parameter
over the round's updates, so fewer than half of the participants cannot pull it outside the honest ones'
range, however large their updates. Sample counts are not weights here (a participant could inflate them);
with an even count the median is the mean of the two middle values."""

from __future__ import annotations

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


class Median(Strategy):
    name = "median"

    def aggregate(self, round_updates: RoundUpdates) -> Aggregate:
        result: State = {}
        for spec, tensors, _ in tensorwise(round_updates):
            ordered = sorted_stack(tensors, compute_dtype(spec))
            count = ordered.shape[0]
            middle = ordered[(count - 1) // 2 : count // 2 + 1].mean(dim=0)
            result[spec.name] = cast_like(spec, middle)
        return Aggregate(server_step(round_updates, result, self.config.federation.server_lr))
