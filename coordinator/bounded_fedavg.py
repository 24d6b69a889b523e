"""FedAvg that never hands back a non-finite model: the round's updates are screened by their distance from
the base model (coordinator.update_bounds), and an aggregate holding a NaN or an Inf is redone without the
farthest update until it is finite. A dropped update costs its participant the round, never the run.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import torch

from coordinator.aggregation import FedAvgAccumulator, reusable_sums
from coordinator.update_bounds import farthest, non_finite_tensors, screen, update_distance
from zk0.spool import SpoolReader
from zk0.tensors import Manifest

State = dict[str, torch.Tensor]


def bounded_mean(
    manifest: Manifest,
    updates: Mapping[str, tuple[Path, float]],
    distances: dict[str, float],
    *,
    base: Path,
    bounds: Mapping[str, float],
    min_updates: int,
    finish: Callable[[State], State],
    reuse: Mapping[str, torch.Tensor] | None = None,
) -> tuple[State | None, dict[str, str]]:
    """The sample-weighted mean of `updates` {name: (spooled file, weight)}, folded in name order and passed
    through `finish` (e.g. the server learning rate), and {name: reason} for each update left out; None for
    the mean when fewer than `min_updates` remain. With nothing to leave out it is exactly one FedAvg pass.

    `distances` {name: ||update - base||} is completed in place for updates that lack one (kept from before
    a restart), reading them and the `base` model file; `bounds` are `update_bounds.screen`'s keywords."""
    with SpoolReader(base) as base_model:
        for name in sorted(set(updates) - set(distances)):
            with SpoolReader(updates[name][0]) as update:
                distances[name] = update_distance(update, base_model)
    dropped = screen({name: distances[name] for name in updates}, **bounds)
    kept = {name: update for name, update in updates.items() if name not in dropped}
    spare = reuse
    while len(kept) >= min_updates and kept:
        accumulator = FedAvgAccumulator(manifest, reuse=spare)
        for name in sorted(kept):
            path, weight = kept[name]
            accumulator.add(path, weight)
        result = finish(accumulator.take_result())
        bad = non_finite_tensors(result)
        if not bad:
            return result, dropped
        worst = farthest({name: distances[name] for name in kept})
        listed = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        dropped[worst] = (
            f"the round's aggregate with it is not finite ({listed}); left out as the update farthest from "
            f"the base model (distance {distances[worst]:.4g})"
        )
        del kept[worst]
        spare = reusable_sums(result)
    return None, dropped
