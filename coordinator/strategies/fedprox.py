"""FedProx (Li et al., 2020): FedAvg on the server; each participant adds mu/2 ||w - w_global||^2 to its
local loss, so the only difference here is that the round's tasks carry federation.mu (adaptive rules may
move it, see coordinator/adaptive.py)."""

from __future__ import annotations

from coordinator.strategies.fedavg import FedAvg


class FedProx(FedAvg):
    name = "fedprox"
    sends_mu = True
