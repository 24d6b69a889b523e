"""FedAdam (Reddi et al., "Adaptive Federated Optimization", 2021): the round's FedAvg mean minus the base
model is a pseudo-gradient, and the server takes an Adam step along it with its own learning rate
strategy.eta: per-coordinate step sizes, so parameters the participants agree on move further.

    delta = mean - x;  m = b1 m + (1 - b1) delta;  v = b2 v + (1 - b2) delta^2
    x' = x + eta_t m / (sqrt(v) + tau),  eta_t = eta sqrt(1 - b2^t) / (1 - b1^t)   (bias-corrected, t = step)

m and v start at zero and are the server state: saved with every global model, so a resumed run takes the
same steps. They are computed into new tensors, adopted only once the round is kept (a round redone without
an update must not advance them twice). Memory: the model, the mean, and m and v twice (old and new).
"""

from __future__ import annotations

import math

import torch

from coordinator.strategies.base import Aggregate, RoundUpdates, State, Strategy, cast_like, compute_dtype
from coordinator.strategies.fedavg import weighted_mean
from zk0.spool import SpoolReader

STEP = "step"


class FedAdam(Strategy):
    name = "fedadam"

    def __init__(self, config) -> None:
        super().__init__(config)
        self.moments: State = {}
        self.step = 0

    def second_moment(self, v: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        b2 = self.options.beta2
        return b2 * v + (1 - b2) * delta.square()

    def aggregate(self, round_updates: RoundUpdates) -> Aggregate:
        mean = weighted_mean(round_updates)
        o = self.options
        step = self.step + 1
        eta = o.eta * math.sqrt(1 - o.beta2**step) / (1 - o.beta1**step)
        result: State = {}
        moments: State = {STEP: torch.tensor(step, dtype=torch.int64)}
        with SpoolReader(round_updates.base) as base:
            for spec in round_updates.manifest:
                dtype = compute_dtype(spec)
                x = base[spec.name].to(dtype)
                delta = mean.pop(spec.name).to(dtype) - x
                m = self.moments.get(f"m/{spec.name}", torch.zeros_like(x))
                v = self.moments.get(f"v/{spec.name}", torch.zeros_like(x))
                m = o.beta1 * m + (1 - o.beta1) * delta
                v = self.second_moment(v, delta)
                result[spec.name] = cast_like(spec, x + eta * m / (v.sqrt() + o.tau))
                moments[f"m/{spec.name}"], moments[f"v/{spec.name}"] = m, v
        return Aggregate(result, {"server_step": step, "eta": eta}, server_state=moments)

    def server_state(self) -> State | None:
        return self.moments or None

    def load_server_state(self, state: State | None) -> None:
        self.moments = dict(state or {})
        self.step = int(self.moments[STEP]) if STEP in self.moments else 0
