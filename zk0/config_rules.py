"""The config sections of the coordinator's decision rules: the strategies' options ([strategy]) and the
adaptive hyperparameters ([adaptive]); part of the one typed config (zk0/config.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from zk0.config_checks import ConfigError, factor, non_negative, positive

if TYPE_CHECKING:
    from zk0.config import FederationConfig, TrainConfig


@dataclass
class StrategyConfig:
    """Options of the aggregation strategies (coordinator/strategies/): each is read by the one named."""

    # trimmed_mean: the fraction of updates cut from each end at every coordinate, in [0, 0.5).
    trim_fraction: float = 0.25
    # norm_bounded: each update's L2 distance from the base model is scaled down to at most this.
    clip_norm: float = 1.0
    # fedadam / fedyogi: the server's step size, its moment decay rates, and the adaptivity floor tau.
    eta: float = 0.01
    beta1: float = 0.9
    beta2: float = 0.99
    tau: float = 0.001

    def check(self) -> None:
        if not 0 <= self.trim_fraction < 0.5:
            raise ConfigError(f"strategy.trim_fraction: {self.trim_fraction} must be in [0, 0.5)")
        positive("strategy.clip_norm", self.clip_norm)
        positive("strategy.eta", self.eta)
        for key in ("beta1", "beta2"):
            if not 0 <= getattr(self, key) < 1:
                raise ConfigError(f"strategy.{key}: {getattr(self, key)} must be in [0, 1)")
        positive("strategy.tau", self.tau)

    def check_against(self, federation: FederationConfig) -> None:
        if federation.strategy in ("fedadam", "fedyogi") and federation.server_lr != 1.0:
            raise ConfigError(
                f"federation.server_lr: {federation.server_lr} is not read by {federation.strategy}, which "
                "steps with strategy.eta; leave it at 1"
            )


@dataclass
class AdaptiveConfig:
    """Adaptive hyperparameters (coordinator/adaptive.py): each rule is off unless its switch is true.

    Every rule reads the run's history only (mu, lr, participant training losses and composite evaluation
    loss per round), so a resumed coordinator replays it to the same values. A value exactly at a threshold
    never fires a rule.
    """

    # Dynamic mu: raise mu (x mu_factor, up to mu_max) when the population std of the participants' training
    # losses in a round exceeds mu_spread_threshold; divide it by mu_factor (down to mu_min) each time the
    # spread has stayed below the threshold for mu_calm_rounds consecutive rounds; multiply it by mu_decay
    # every round (1 = no decay).
    mu_dynamic: bool = False
    mu_spread_threshold: float = 0.1
    mu_factor: float = 2.0
    mu_min: float = 0.001
    mu_max: float = 1.0
    mu_calm_rounds: int = 2
    mu_decay: float = 1.0
    # Server LR: over the last lr_window evaluations made at the current LR, a relative rise of the composite
    # evaluation loss above lr_diverge_tolerance multiplies the LR by lr_diverge_factor; otherwise a relative
    # improvement below lr_stall_tolerance multiplies it by lr_stall_factor. Clamped to [lr_min, lr_max].
    lr_adjust: bool = False
    lr_window: int = 3
    lr_stall_tolerance: float = 0.01
    lr_stall_factor: float = 0.5
    lr_diverge_tolerance: float = 0.1
    lr_diverge_factor: float = 0.5
    lr_min: float = 1e-6
    lr_max: float = 1e-2
    # Per-participant boost: a participant whose training loss exceeds boost_k x the mean of the round's
    # losses trains next round at boost_factor x the server LR (clamped to [lr_min, lr_max]).
    lr_boost: bool = False
    boost_k: float = 1.5
    boost_factor: float = 1.5
    # Spike guard: when the composite evaluation loss rises by more than spike_threshold (relative) over the
    # best of the previous spike_window evaluations, hold mu and lr as they are and boost nobody; with
    # spike_rollback the next round also starts from the best global model so far.
    spike_guard: bool = False
    spike_threshold: float = 0.5
    spike_window: int = 3
    spike_rollback: bool = False

    def check(self) -> None:
        positive("adaptive.mu_spread_threshold", self.mu_spread_threshold)
        if self.mu_factor <= 1:
            raise ConfigError(f"adaptive.mu_factor: {self.mu_factor} must be > 1")
        positive("adaptive.mu_min", self.mu_min)
        if self.mu_max < self.mu_min:
            raise ConfigError(f"adaptive.mu_max: {self.mu_max} is below adaptive.mu_min {self.mu_min}")
        positive("adaptive.mu_calm_rounds", self.mu_calm_rounds)
        if not 0 < self.mu_decay <= 1:
            raise ConfigError(f"adaptive.mu_decay: {self.mu_decay} must be in (0, 1]")
        if self.lr_window < 2:
            raise ConfigError(f"adaptive.lr_window: {self.lr_window} must be >= 2 (a trend needs two points)")
        non_negative("adaptive.lr_stall_tolerance", self.lr_stall_tolerance)
        factor("adaptive.lr_stall_factor", self.lr_stall_factor)
        non_negative("adaptive.lr_diverge_tolerance", self.lr_diverge_tolerance)
        factor("adaptive.lr_diverge_factor", self.lr_diverge_factor)
        positive("adaptive.lr_min", self.lr_min)
        if self.lr_max < self.lr_min:
            raise ConfigError(f"adaptive.lr_max: {self.lr_max} is below adaptive.lr_min {self.lr_min}")
        if self.boost_k < 1:
            raise ConfigError(f"adaptive.boost_k: {self.boost_k} must be >= 1 (k x the mean loss)")
        if self.boost_factor <= 1:
            raise ConfigError(f"adaptive.boost_factor: {self.boost_factor} must be > 1")
        positive("adaptive.spike_threshold", self.spike_threshold)
        positive("adaptive.spike_window", self.spike_window)

    def check_against(self, federation: FederationConfig, train: TrainConfig) -> None:
        """The starting values must lie within the clamps, as the config documents: train.lr within
        [lr_min, lr_max] always (they bound every LR a participant is sent), federation.mu within
        [mu_min, mu_max] whenever participants train with it (fedprox)."""
        if self.mu_dynamic and federation.strategy != "fedprox":
            raise ConfigError(
                f'adaptive.mu_dynamic: needs federation.strategy = "fedprox" '
                f"({federation.strategy} trains with mu = 0)"
            )
        if federation.strategy == "fedprox":
            if federation.mu < self.mu_min:
                raise ConfigError(
                    f"federation.mu: {federation.mu} is below adaptive.mu_min {self.mu_min} "
                    f'(mu must lie within [mu_min, mu_max]; for mu = 0 use federation.strategy = "fedavg")'
                )
            if federation.mu > self.mu_max:
                raise ConfigError(
                    f"federation.mu: {federation.mu} exceeds adaptive.mu_max {self.mu_max} "
                    "(mu must lie within [mu_min, mu_max])"
                )
        if train.lr < self.lr_min:
            raise ConfigError(
                f"train.lr: {train.lr} is below adaptive.lr_min {self.lr_min} "
                "(lr must lie within [lr_min, lr_max])"
            )
        if train.lr > self.lr_max:
            raise ConfigError(
                f"train.lr: {train.lr} exceeds adaptive.lr_max {self.lr_max} "
                "(lr must lie within [lr_min, lr_max])"
            )
