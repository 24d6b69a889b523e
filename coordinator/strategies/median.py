"""Coordinate-wise median (Yin et al., 2018): each parameter of the new model is the median of that parameter
over the round's updates, so fewer than half of the participants cannot pull it outside the honest ones'
range, however large their updates. Sample counts are not weights here (a participant could inflate them);
with an even count the median is the mean of the two middle values."""

from __future__ import annotations

import torch

from coordinator.strategies.base import (
    Aggregate,
    RoundUpdates,
    State,
    Strategy,
    coordinatewise,
    server_step,
    tensorwise,
)


def middle(ordered: torch.Tensor) -> torch.Tensor:
    """The median of each column of sorted rows: the middle row, or the mean of the two middle rows."""
    count = ordered.shape[0]
    return ordered[(count - 1) // 2 : count // 2 + 1].mean(dim=0)


class Median(Strategy):
    name = "median"

    def aggregate(self, round_updates: RoundUpdates) -> Aggregate:
        result: State = {
            spec.name: coordinatewise(spec, tensors, middle) for spec, tensors, _ in tensorwise(round_updates)
        }
        return Aggregate(server_step(round_updates, result, self.config.federation.server_lr))
