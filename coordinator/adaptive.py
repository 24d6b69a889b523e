"""Adaptive hyperparameters: pure functions of the run's history (no I/O, no torch).

The coordinator keeps one `RoundRecord` per completed round (the mu and server LR it sent, the participants'
training losses, the composite evaluation loss when the round was evaluated) and calls `decide()` before each
round. Nothing else is read, so a resumed coordinator that rebuilds the history from metrics.jsonl replays
every rule to the same values. The switches in `AdaptiveConfig` are read by `decide()`; each rule function
(`next_mu`, `next_lr`, `boosts`, `spike`) applies its rule unconditionally.

Conventions, chosen once and tested:
- Ties never fire: a value exactly at a threshold is neither above nor below it (strict comparisons). For
  dynamic mu a spread exactly at the threshold neither raises mu nor counts as a calm round (it ends a calm
  streak).
- The spread is the population std of a round's training losses; with one participant it is 0.
- A record without training losses (round 0: the initial model's evaluation) leaves mu alone (no spread rule,
  no decay, no boost) and neither counts as calm nor ends a calm streak.
- Evaluations are the records whose `eval_loss` is not None; the others are skipped in every trend. The LR
  rule and the spike guard act only when the last record was evaluated (new evidence), so an unevaluated round
  never fires a rule again on old evidence. A NaN evaluation loss counts as +inf (worse than any other).
- The LR window is the last `lr_window` evaluations made at the current LR (the trailing records whose lr is
  the current one): each LR level gets a whole window before it can change again, and a short history (fewer
  evaluations than the window) changes nothing.
- Relative changes are taken against |old|; when old is 0 or not finite the change is undefined and no rule
  fires on it. The boost needs a positive, finite mean loss.
- Every mu stays within [mu_min, mu_max] and every LR (server and boosted) within [lr_min, lr_max].
- The current value of a quantity is the last record's when its rule is on, the base value otherwise (or when
  the history is empty): with every rule off `decide()` returns the base values unchanged.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from zk0.config import AdaptiveConfig
from zk0.records import Adaptive, RoundEntry, latest_rounds


@dataclass(frozen=True)
class RoundRecord:
    """What one completed round used and produced."""

    round: int
    eval_loss: float | None  # composite evaluation loss of the round's global model; None if not evaluated
    train_losses: Mapping[str, float]  # participant name -> its training loss this round
    mu: float  # the mu participants trained with
    lr: float  # the server LR participants were sent (boosted participants trained at more)


@dataclass(frozen=True)
class Decision:
    """The values for the next round and why."""

    mu: float
    lr: float
    lr_per_participant: dict[str, float] = field(default_factory=dict)  # boosted participants only
    rules: list[str] = field(default_factory=list)  # one line per rule that fired
    hold: bool = False  # the spike guard held every adjustment
    rollback: bool = False  # start the next round from the best global model so far

    def lr_for(self, participant: str) -> float:
        return self.lr_per_participant.get(participant, self.lr)

    def to_record(self) -> Adaptive:
        """The decision as the round record keeps it (zk0.records.Adaptive)."""
        return Adaptive(
            self.mu,
            self.lr,
            dict(sorted(self.lr_per_participant.items())),
            list(self.rules),
            self.hold,
            self.rollback,
        )


def decide(
    history: Sequence[RoundRecord], cfg: AdaptiveConfig, *, base_mu: float, base_lr: float
) -> Decision:
    """The mu, server LR and per-participant LRs for the round after `history`."""
    mu = history[-1].mu if history and cfg.mu_dynamic else base_mu
    lr = history[-1].lr if history and cfg.lr_adjust else base_lr
    if not history:
        return Decision(mu=mu, lr=lr)
    if cfg.spike_guard:
        reason = spike(history, cfg)
        if reason is not None:
            return Decision(mu=mu, lr=lr, rules=[reason], hold=True, rollback=cfg.spike_rollback)
    rules: list[str] = []
    if cfg.mu_dynamic:
        mu, fired = next_mu(history, cfg, mu)
        rules += fired
    if cfg.lr_adjust:
        lr, fired = next_lr(history, cfg, lr)
        rules += fired
    per_participant: dict[str, float] = {}
    if cfg.lr_boost:
        per_participant, fired = boosts(history, cfg, lr)
        rules += fired
    return Decision(mu=mu, lr=lr, lr_per_participant=per_participant, rules=rules)


def next_mu(history: Sequence[RoundRecord], cfg: AdaptiveConfig, mu: float) -> tuple[float, list[str]]:
    """Dynamic mu from the spread of the last round's training losses, then the per-round decay."""
    if not history or not history[-1].train_losses:
        return mu, []
    rules = []
    spread = loss_spread(history[-1].train_losses)
    if spread > cfg.mu_spread_threshold:
        new = _clamp(mu * cfg.mu_factor, cfg.mu_min, cfg.mu_max)
        rules.append(
            f"dynamic mu: loss std {spread:.4g} > {cfg.mu_spread_threshold:.4g}, "
            f"mu {_change(mu, new, mu * cfg.mu_factor, 'mu')}"
        )
        mu = new
    else:
        streak = calm_streak(history, cfg.mu_spread_threshold)
        if streak and streak % cfg.mu_calm_rounds == 0:
            new = _clamp(mu / cfg.mu_factor, cfg.mu_min, cfg.mu_max)
            rules.append(
                f"dynamic mu: loss std below {cfg.mu_spread_threshold:.4g} for {streak} rounds, "
                f"mu {_change(mu, new, mu / cfg.mu_factor, 'mu')}"
            )
            mu = new
    if cfg.mu_decay < 1:
        new = _clamp(mu * cfg.mu_decay, cfg.mu_min, cfg.mu_max)
        rules.append(f"mu decay: x{cfg.mu_decay:.4g}, mu {_change(mu, new, mu * cfg.mu_decay, 'mu')}")
        mu = new
    return mu, rules


def loss_spread(train_losses: Mapping[str, float]) -> float:
    """Population std of the losses (0 for one participant); NaN if any loss is not finite."""
    values = list(train_losses.values())
    if not all(math.isfinite(v) for v in values):
        return math.nan
    return statistics.pstdev(values) if len(values) > 1 else 0.0


def calm_streak(history: Sequence[RoundRecord], threshold: float) -> int:
    """Consecutive trailing rounds whose loss spread was strictly below the threshold (records without losses
    are skipped: they neither count nor end the streak)."""
    streak = 0
    for record in reversed(history):
        if not record.train_losses:
            continue
        if not loss_spread(record.train_losses) < threshold:
            break
        streak += 1
    return streak


def next_lr(history: Sequence[RoundRecord], cfg: AdaptiveConfig, lr: float) -> tuple[float, list[str]]:
    """The server LR from the trend of the composite evaluation loss over the window at the current LR."""
    if not history or history[-1].eval_loss is None:
        return lr, []
    window = [loss for loss in _losses_at(history, lr) if loss is not None][-cfg.lr_window :]
    if len(window) < cfg.lr_window:
        return lr, []
    old, new = window[0], window[-1]
    change = _relative(old, new)
    if change is None:
        return lr, []
    if change > cfg.lr_diverge_tolerance:
        factor = cfg.lr_diverge_factor
        why = f"diverging, eval loss {change:+.2%} > +{cfg.lr_diverge_tolerance:.2%}"
    elif -change < cfg.lr_stall_tolerance:
        factor = cfg.lr_stall_factor
        why = f"stalled, eval loss {change:+.2%} (improvement < {cfg.lr_stall_tolerance:.2%})"
    else:
        return lr, []
    updated = _clamp(lr * factor, cfg.lr_min, cfg.lr_max)
    rule = f"server lr: {why} over {len(window)} evaluations ({old:.4g} -> {new:.4g}), lr "
    return updated, [rule + _change(lr, updated, lr * factor, "lr")]


def boosts(
    history: Sequence[RoundRecord], cfg: AdaptiveConfig, lr: float
) -> tuple[dict[str, float], list[str]]:
    """LR boosts for the participants whose last training loss exceeds boost_k x the mean loss."""
    if not history or not history[-1].train_losses:
        return {}, []
    losses = history[-1].train_losses
    mean = math.fsum(losses.values()) / len(losses)
    if not (math.isfinite(mean) and mean > 0):
        return {}, []
    limit = cfg.boost_k * mean
    boosted: dict[str, float] = {}
    rules = []
    for name in sorted(losses):
        if losses[name] > limit:
            boosted[name] = _clamp(lr * cfg.boost_factor, cfg.lr_min, cfg.lr_max)
            rules.append(
                f"lr boost: {name} loss {losses[name]:.4g} > {cfg.boost_k:.4g} x mean {mean:.4g}, "
                f"lr {_change(lr, boosted[name], lr * cfg.boost_factor, 'lr')}"
            )
    return boosted, rules


def spike(history: Sequence[RoundRecord], cfg: AdaptiveConfig) -> str | None:
    """Why the spike guard fires on the last evaluation, or None: its relative rise over the best of the
    previous spike_window evaluations exceeds spike_threshold."""
    if not history or history[-1].eval_loss is None:
        return None
    evaluations = [_eval_loss(r.eval_loss) for r in history if r.eval_loss is not None]
    latest, previous = evaluations[-1], evaluations[:-1][-cfg.spike_window :]
    if not previous:
        return None
    best = min(previous)
    change = _relative(best, latest)
    if change is None or not change > cfg.spike_threshold:
        return None
    then = "holding mu and lr, rolling back to the best model" if cfg.spike_rollback else "holding mu and lr"
    return (
        f"spike guard: eval loss {latest:.4g} is {change:+.2%} over the best {best:.4g} of the last "
        f"{len(previous)} evaluations (> {cfg.spike_threshold:.2%}), {then}"
    )


def _losses_at(history: Sequence[RoundRecord], lr: float) -> list[float | None]:
    """Evaluation losses (None where not evaluated) of the trailing records at this LR, oldest first."""
    trailing = []
    for record in reversed(history):
        if not math.isclose(record.lr, lr, rel_tol=1e-9, abs_tol=0.0):
            break
        trailing.append(None if record.eval_loss is None else _eval_loss(record.eval_loss))
    return trailing[::-1]


def _eval_loss(loss: float) -> float:
    return math.inf if math.isnan(loss) else loss


def _relative(old: float, new: float) -> float | None:
    if old == 0 or not math.isfinite(old):
        return None
    return (new - old) / abs(old)


def _clamp(value: float, low: float, high: float) -> float:
    return min(max(value, low), high)


def _change(old: float, new: float, unclamped: float, name: str) -> str:
    text = f"{old:.4g} -> {new:.4g}"
    if new != unclamped:
        text += f" (clamped to {name}_{'min' if unclamped < new else 'max'})"
    return text


def records_from_metrics(
    entries: Iterable[RoundEntry], *, base_mu: float, base_lr: float
) -> list[RoundRecord]:
    """The history `decide()` needs, from the run's round records: one per completed round (the last
    aggregated attempt of each), round 0 being the initial model's evaluation."""
    records = []
    for round_idx, entry in latest_rounds(entries).items():
        hp = entry.hyperparameters
        records.append(
            RoundRecord(
                round=round_idx,
                eval_loss=entry.eval.loss if entry.eval is not None else None,
                train_losses=entry.train_losses,
                mu=hp.mu if hp is not None else base_mu,
                lr=hp.lr if hp is not None else base_lr,
            )
        )
    return records
