"""FedYogi (Reddi et al., 2021): FedAdam with Yogi's additive second moment,
v = v - (1 - b2) delta^2 sign(v - delta^2), which grows v no faster than the squared pseudo-gradient and so
keeps the effective server step from collapsing after one large round."""

from __future__ import annotations

import torch

from coordinator.strategies.fedadam import FedAdam


class FedYogi(FedAdam):
    name = "fedyogi"

    def second_moment(self, v: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        square = delta.square()
        return v - (1 - self.options.beta2) * square * torch.sign(v - square)
