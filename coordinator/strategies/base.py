"""The strategy seam: what a federation strategy decides and computes, and nothing about how rounds run.

A strategy plans a round (who trains, with which lr and mu, from the run's history) and aggregates it (the
round's base model + its validated, spooled updates -> the next global model). coordinator/rounds.py keeps
the state machine (membership, leases, deadlines, intake) and calls in here; coordinator/screening.py wraps
`aggregate` with the checks every strategy shares (distance screening, a finite result).

Updates stay on disk: an aggregate reads them one tensor at a time (`tensorwise` below, or a FedAvg
accumulator), so coordinator memory is O(model + P x largest tensor), never O(P x model).

A new strategy is one module in this package with a `Strategy` subclass naming itself (`name = "..."`), plus
its name in zk0.config.STRATEGIES and any options it reads in the config's [strategy] section.
"""

from __future__ import annotations

import math
import random
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from coordinator.adaptive import Decision, RoundRecord, decide
from coordinator.aggregation import apply_server_lr
from zk0.config import Config
from zk0.spool import SpoolReader
from zk0.tensors import Manifest, TensorSpec, torch_dtype

State = dict[str, torch.Tensor]

_REGISTRY: dict[str, type[Strategy]] = {}
SORT_BLOCK = 1 << 18  # coordinates sorted at once by the coordinate-wise rules


@dataclass(frozen=True)
class RoundUpdates:
    """One round's validated updates, as the strategies see them."""

    round: int
    manifest: Manifest
    base: Path  # the global model file every update was trained from
    updates: Mapping[str, tuple[Path, float]]  # participant -> (spooled safetensors file, sample count)
    distances: Mapping[str, float]  # participant -> L2 distance of its update from `base`
    reuse: Mapping[str, torch.Tensor] | None = None  # last round's result: memory an aggregate may reuse


@dataclass
class Aggregate:
    """A strategy's result: the new global model, what it did (for the round record), and server state
    (e.g. FedAdam's moments) that becomes the strategy's own only once the round is kept."""

    state: State
    stats: dict[str, Any] = field(default_factory=dict)
    server_state: State | None = None


class Strategy(ABC):
    """Base class: FedAvg-style planning (the adaptive rules, uniform sampling); subclasses aggregate."""

    name: ClassVar[str] = ""
    sends_mu: ClassVar[bool] = False  # FedProx: participants add mu/2 ||w - w_global||^2 to their loss

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.name:
            if cls.name in _REGISTRY:
                raise TypeError(f"two strategies are named {cls.name!r}")
            _REGISTRY[cls.name] = cls

    def __init__(self, config: Config) -> None:
        self.config = config
        self.options = config.strategy
        self.base_mu = config.federation.mu if self.sends_mu else 0.0
        self.base_lr = config.train.lr

    # ------------------------------------------------------------------ planning

    def plan(self, history: Sequence[RoundRecord]) -> Decision:
        """The next round's mu and learning rates: the adaptive rules (coordinator/adaptive.py) applied to
        the run's history; with every rule off, the configured values."""
        return decide(history, self.config.adaptive, base_mu=self.base_mu, base_lr=self.base_lr)

    def sample(self, round_idx: int, attempt: int, live: Sequence[str], kept: Sequence[str]) -> list[str]:
        """Who trains this round: `kept` (updates accepted before a restart) and a seeded uniform sample of
        the other live participants, enough for federation.fraction and federation.min_updates."""
        fed = self.config.federation
        candidates = sorted(n for n in live if n not in kept)
        k = max(fed.min_updates - len(kept), math.ceil(fed.fraction * len(live)))
        rng = random.Random(self.config.seed * 1_000_003 + round_idx * 1009 + attempt)
        picked = rng.sample(candidates, min(k, len(candidates)))
        return sorted(set(picked) | set(kept))

    # ------------------------------------------------------------------ aggregation

    @abstractmethod
    def aggregate(self, round_updates: RoundUpdates) -> Aggregate:
        """The next global model from the round's updates (at least federation.min_updates of them)."""

    # ------------------------------------------------------------------ server state

    def server_state(self) -> State | None:
        """State the strategy carries from round to round (None: stateless); saved with each global model."""
        return None

    def load_server_state(self, state: State | None) -> None:
        """Adopt state saved after a completed round (on resume) or produced by an accepted aggregate;
        stateless strategies have none to adopt."""
        if state:
            raise ValueError(
                f"strategy {self.name!r} keeps no server state, but was handed {len(state)} tensors"
            )


def registered() -> dict[str, type[Strategy]]:
    return dict(_REGISTRY)


def tensorwise(round_updates: RoundUpdates) -> Iterator[tuple[TensorSpec, list[torch.Tensor], list[float]]]:
    """(spec, that tensor of every update in participant order, their weights), one tensor at a time: the
    memory of a coordinate-wise rule is P x the largest tensor, whatever the model's size."""
    names = sorted(round_updates.updates)
    weights = [round_updates.updates[n][1] for n in names]
    with ExitStack() as stack:
        readers = [stack.enter_context(SpoolReader(round_updates.updates[n][0])) for n in names]
        for spec in round_updates.manifest:
            yield spec, [reader[spec.name] for reader in readers], weights


def cast_like(spec: TensorSpec, value: torch.Tensor) -> torch.Tensor:
    """An fp32/fp64 result cast to the manifest's dtype, integers rounded to nearest first."""
    dtype = torch_dtype(spec.dtype)
    if not (dtype.is_floating_point or dtype.is_complex):
        value = value.round()
    return value.to(dtype)


def compute_dtype(spec: TensorSpec) -> torch.dtype:
    """fp32 for float tensors of 32 bits or fewer; fp64 where fp32 would lose digits (fp64, int64)."""
    dtype = torch_dtype(spec.dtype)
    return torch.float32 if dtype.is_floating_point and dtype.itemsize <= 4 else torch.float64


def server_step(round_updates: RoundUpdates, result: State, server_lr: float) -> State:
    """base + server_lr * (result - base): FedAvg with a server learning rate (Reddi et al., 2021), applied
    to any rule's result. server_lr = 1 returns `result` without reading the base model."""
    if server_lr == 1.0:
        return result
    with SpoolReader(round_updates.base) as base:
        return apply_server_lr(base, result, server_lr)


def coordinatewise(
    spec: TensorSpec, tensors: list[torch.Tensor], reduce: Callable[[torch.Tensor], torch.Tensor]
) -> torch.Tensor:
    """`reduce` applied to the P values of every coordinate, sorted (row k holds the k-th smallest; NaN sorts
    last), block by block: the sort's temporaries (values and int64 indices) stay a few MiB per block while
    the inputs are P x the tensor."""
    dtype = compute_dtype(spec)
    flat = [t.reshape(-1) for t in tensors]
    out = torch.empty(flat[0].numel(), dtype=dtype)
    for start in range(0, out.numel(), SORT_BLOCK):
        block = torch.stack([t[start : start + SORT_BLOCK].to(dtype) for t in flat])
        out[start : start + SORT_BLOCK] = reduce(block.sort(dim=0).values)
    return cast_like(spec, out.reshape(spec.shape))
