"""FedProx's proximal term, kept pure so it tests against the explicit formula without a model."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def snapshot(params: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Detached copies: the anchor must not move when the parameters do, nor carry autograd history."""
    return [p.detach().clone() for p in params]


def proximal_term(params: Sequence[torch.Tensor], anchor: Sequence[torch.Tensor], mu: float) -> torch.Tensor:
    """(mu / 2) * sum ||w - w_anchor||^2, accumulated in fp32 whatever the parameters' dtype."""
    if len(params) != len(anchor):
        raise ValueError(f"{len(params)} parameters but {len(anchor)} anchor tensors")
    total = params[0].new_zeros((), dtype=torch.float32)
    for p, a in zip(params, anchor, strict=True):
        total = total + (p.float() - a.float()).pow(2).sum()
    return 0.5 * mu * total


@torch.no_grad()
def distance(params: Sequence[torch.Tensor], anchor: Sequence[torch.Tensor]) -> float:
    """||w - w_anchor||: how far a round moved the model (the update norm)."""
    sq = sum(float((p.float() - a.float()).pow(2).sum()) for p, a in zip(params, anchor, strict=True))
    return sq**0.5
