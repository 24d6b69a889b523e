"""What every strategy's aggregate goes through: the round's updates are screened by their distance from the
base model (coordinator.update_bounds), and an aggregate holding a NaN or an Inf is redone without the
farthest update until it is finite. A dropped update costs its participant the round, never the run.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

import torch

from coordinator.aggregation import reusable_sums
from coordinator.strategies import Aggregate, RoundUpdates, Strategy
from coordinator.update_bounds import farthest, non_finite_tensors, screen, update_distance
from zk0.spool import SpoolReader


def complete_distances(
    updates: Mapping[str, tuple[Path, float]], distances: dict[str, float], base: Path
) -> None:
    """Fill in ||update - base|| for updates that lack one (kept from before a restart), in place."""
    missing = sorted(set(updates) - set(distances))
    if not missing:
        return
    with SpoolReader(base) as base_model:
        for name in missing:
            with SpoolReader(updates[name][0]) as update:
                distances[name] = update_distance(update, base_model)


def screened_aggregate(
    strategy: Strategy,
    round_updates: RoundUpdates,
    *,
    bounds: Mapping[str, float],
    min_updates: int,
) -> tuple[Aggregate | None, dict[str, str]]:
    """`strategy`'s aggregate of the updates that pass `bounds` (update_bounds.screen's keywords), and
    {name: reason} for each update left out; None when fewer than `min_updates` remain. With nothing to
    leave out it is exactly one call of `strategy.aggregate`. `round_updates.distances` must cover every
    update (complete_distances)."""
    distances = dict(round_updates.distances)
    dropped = screen({name: distances[name] for name in round_updates.updates}, **bounds)
    kept = {name: update for name, update in round_updates.updates.items() if name not in dropped}
    spare: Mapping[str, torch.Tensor] | None = round_updates.reuse
    while len(kept) >= min_updates and kept:
        result = strategy.aggregate(replace(round_updates, updates=dict(kept), reuse=spare))
        bad = non_finite_tensors(result.state)
        if not bad:
            return result, dropped
        worst = farthest({name: distances[name] for name in kept})
        listed = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        dropped[worst] = (
            f"the round's aggregate with it is not finite ({listed}); left out as the update farthest from "
            f"the base model (distance {distances[worst]:.4g})"
        )
        del kept[worst]
        spare = reusable_sums(result.state)
    return None, dropped
