"""The adaptive rules (coordinator/adaptive.py) as pure functions: each rule's edge cases."""

import math

import pytest

from coordinator.adaptive import (
    Decision,
    RoundRecord,
    boosts,
    calm_streak,
    decide,
    loss_spread,
    next_lr,
    next_mu,
    spike,
)
from zk0.config import AdaptiveConfig

MU, LR = 0.01, 1e-3


def rec(round_, eval_loss=None, losses=None, mu=MU, lr=LR):
    return RoundRecord(round=round_, eval_loss=eval_loss, train_losses=losses or {}, mu=mu, lr=lr)


def cfg(**changes):
    return AdaptiveConfig(**changes)


WIDE = {"a": 1.0, "b": 2.0}  # population std 0.5
NARROW = {"a": 1.0, "b": 1.02}  # population std 0.01
ALL_ON = dict(mu_dynamic=True, lr_adjust=True, lr_boost=True, spike_guard=True, spike_rollback=True)


def replay(cfg_, rounds):
    """Run decide() round after round as the coordinator would: each record uses the previous decision."""
    history, decisions = [], []
    for i, (eval_loss, losses) in enumerate(rounds):
        decision = decide(history, cfg_, base_mu=MU, base_lr=LR)
        decisions.append(decision)
        history.append(rec(i, eval_loss, losses, mu=decision.mu, lr=decision.lr))
    decisions.append(decide(history, cfg_, base_mu=MU, base_lr=LR))
    return history, decisions


# --- all off -------------------------------------------------------------------------------------------


def test_all_off_is_the_identity_whatever_the_history():
    history = [
        rec(0, 1.0, {}, mu=0.5, lr=0.1),
        rec(1, 0.2, {"a": 0.1, "b": 9.0}, mu=0.5, lr=0.1),
        rec(2, 9.0, {"a": 0.1, "b": 9.0, "c": 50.0}, mu=0.5, lr=0.1),
    ]
    decision = decide(history, AdaptiveConfig(), base_mu=MU, base_lr=LR)
    assert decision == Decision(mu=MU, lr=LR, lr_per_participant={}, rules=[], hold=False, rollback=False)


def test_spike_rollback_alone_does_nothing_without_the_guard():
    history = [rec(0, 1.0), rec(1, 10.0)]
    assert decide(history, cfg(spike_rollback=True), base_mu=MU, base_lr=LR) == Decision(MU, LR)


def test_empty_history_gives_the_base_values_with_every_rule_on():
    assert decide([], cfg(**ALL_ON), base_mu=MU, base_lr=LR) == Decision(MU, LR)


def test_a_rule_that_is_off_uses_the_base_value_not_the_last_record():
    history = [rec(0, None, NARROW, mu=0.3, lr=0.005)]
    decision = decide(history, cfg(lr_boost=True), base_mu=MU, base_lr=LR)
    assert (decision.mu, decision.lr) == (MU, LR)
    decision = decide(history, cfg(mu_dynamic=True, lr_adjust=True), base_mu=MU, base_lr=LR)
    assert (decision.mu, decision.lr) == (0.3, 0.005)


# --- dynamic mu ----------------------------------------------------------------------------------------


def test_spread_is_the_population_std_and_zero_for_one_participant():
    assert loss_spread({"a": 1.0, "b": 2.0}) == 0.5
    assert loss_spread({"solo": 7.0}) == 0.0
    assert math.isnan(loss_spread({"a": 1.0, "b": math.inf}))


def test_mu_rises_when_the_spread_exceeds_the_threshold():
    mu, rules = next_mu([rec(1, None, WIDE)], cfg(mu_spread_threshold=0.1, mu_factor=2.0), 0.01)
    assert mu == 0.02
    assert rules == ["dynamic mu: loss std 0.5 > 0.1, mu 0.01 -> 0.02"]


def test_mu_rise_is_clamped_to_mu_max():
    mu, rules = next_mu([rec(1, None, WIDE)], cfg(mu_factor=2.0, mu_max=1.0), 0.8)
    assert mu == 1.0
    assert rules[0].endswith("(clamped to mu_max)")


def test_a_spread_exactly_at_the_threshold_neither_raises_nor_counts_as_calm():
    tie = {"a": 1.0, "b": 1.5}  # population std exactly 0.25
    c = cfg(mu_spread_threshold=0.25, mu_calm_rounds=1)
    assert next_mu([rec(1, None, tie)], c, 0.1) == (0.1, [])
    assert calm_streak([rec(1, None, NARROW), rec(2, None, tie)], 0.25) == 0


def test_single_participant_never_raises_mu_and_counts_as_calm():
    c = cfg(mu_spread_threshold=1e-9, mu_calm_rounds=1, mu_factor=2.0)
    mu, rules = next_mu([rec(1, None, {"solo": 123.0})], c, 0.04)
    assert mu == 0.02
    assert rules[0].startswith("dynamic mu: loss std below")


def test_mu_is_lowered_each_time_the_calm_streak_reaches_a_multiple_of_calm_rounds():
    c = cfg(mu_dynamic=True, mu_spread_threshold=0.1, mu_factor=2.0, mu_calm_rounds=3, mu_min=1e-4)
    _, decisions = replay(c, [(None, WIDE)] + [(None, NARROW)] * 6)
    # the wide round raises 0.01 -> 0.02; calm rounds 3 and 6 lower it, the others leave it
    assert [d.mu for d in decisions] == [0.01, 0.02, 0.02, 0.02, 0.01, 0.01, 0.01, 0.005]


def test_a_wide_round_ends_the_calm_streak():
    history = [rec(1, None, NARROW), rec(2, None, WIDE), rec(3, None, NARROW)]
    assert calm_streak(history, 0.1) == 1


def test_records_without_losses_neither_count_nor_end_the_calm_streak():
    history = [rec(0, 1.0), rec(1, None, NARROW), rec(2, 0.9), rec(3, None, NARROW)]
    assert calm_streak(history, 0.1) == 2
    c = cfg(mu_calm_rounds=2, mu_factor=2.0)
    assert next_mu(history, c, 0.04)[0] == 0.02
    # the last record has no losses (round 0): mu is left alone, decay included
    assert next_mu(history[:3], cfg(mu_calm_rounds=1, mu_decay=0.5), 0.04) == (0.04, [])


def test_mu_lowering_is_clamped_to_mu_min():
    mu, rules = next_mu([rec(1, None, NARROW)], cfg(mu_calm_rounds=1, mu_factor=10.0, mu_min=0.005), 0.01)
    assert mu == 0.005
    assert rules[0].endswith("(clamped to mu_min)")


def test_mu_decays_every_round_down_to_mu_min():
    tie = {"a": 1.0, "b": 1.5}  # neither wide nor calm at threshold 0.25: only the decay acts
    c = cfg(mu_dynamic=True, mu_spread_threshold=0.25, mu_decay=0.5, mu_min=0.002)
    _, decisions = replay(c, [(None, tie)] * 4)
    assert [d.mu for d in decisions] == [0.01, 0.005, 0.0025, 0.002, 0.002]
    assert decisions[1].rules == ["mu decay: x0.5, mu 0.01 -> 0.005"]
    assert decisions[3].rules == ["mu decay: x0.5, mu 0.0025 -> 0.002 (clamped to mu_min)"]


def test_decay_applies_after_a_raise_and_decay_one_is_silent():
    mu, rules = next_mu([rec(1, None, WIDE)], cfg(mu_factor=4.0, mu_decay=0.5), 0.01)
    assert mu == 0.02 and len(rules) == 2
    assert next_mu([rec(1, None, WIDE)], cfg(mu_factor=4.0, mu_decay=1.0), 0.01) == (
        0.04,
        ["dynamic mu: loss std 0.5 > 0.1, mu 0.01 -> 0.04"],
    )


# --- server LR -----------------------------------------------------------------------------------------


def test_lr_does_not_change_before_the_window_is_full():
    c = cfg(lr_window=3, lr_stall_tolerance=0.01)
    assert next_lr([rec(0, 1.0), rec(1, 1.0)], c, LR) == (LR, [])
    assert next_lr([rec(0, 1.0), rec(1, 1.0), rec(2, 1.0)], c, LR)[0] == LR * 0.5


def test_lr_is_reduced_on_a_stall_and_a_stall_exactly_at_the_tolerance_does_not_fire():
    c = cfg(lr_window=2, lr_stall_tolerance=0.25, lr_stall_factor=0.5)
    lr, rules = next_lr([rec(0, 1.0), rec(1, 0.8)], c, LR)
    assert lr == LR * 0.5
    assert rules[0].startswith(
        "server lr: stalled, eval loss -20.00% (improvement < 25.00%) over 2 evaluations"
    )
    assert next_lr([rec(0, 1.0), rec(1, 0.75)], c, LR) == (LR, [])  # improved by exactly 25%
    assert next_lr([rec(0, 1.0), rec(1, 0.5)], c, LR) == (LR, [])


def test_lr_backs_off_on_divergence_and_a_rise_exactly_at_the_tolerance_is_only_a_stall():
    c = cfg(lr_window=2, lr_diverge_tolerance=0.25, lr_diverge_factor=0.25, lr_stall_factor=0.5)
    lr, rules = next_lr([rec(0, 1.0), rec(1, 1.5)], c, LR)
    assert lr == LR * 0.25 and rules[0].startswith("server lr: diverging, eval loss +50.00% > +25.00%")
    lr, rules = next_lr([rec(0, 1.0), rec(1, 1.25)], c, LR)
    assert lr == LR * 0.5 and rules[0].startswith("server lr: stalled")


def test_lr_trend_skips_rounds_without_evaluation_and_waits_for_a_new_one():
    c = cfg(lr_window=2, lr_stall_tolerance=0.01)
    history = [rec(0, 1.0), rec(1, None, NARROW), rec(2, None, NARROW), rec(3, 1.0, NARROW)]
    lr, rules = next_lr(history, c, LR)
    assert lr == LR * 0.5 and "over 2 evaluations (1 -> 1)" in rules[0]
    # the last round was not evaluated: no new evidence, no change
    assert next_lr([*history, rec(4, None, NARROW)], c, LR) == (LR, [])


def test_lr_window_counts_only_evaluations_at_the_current_lr():
    c = cfg(lr_adjust=True, lr_window=2, lr_stall_tolerance=0.01, lr_stall_factor=0.5)
    _, decisions = replay(c, [(1.0, NARROW)] * 5)
    # stalls throughout, but each LR level first needs two evaluations of its own
    assert [d.lr for d in decisions] == [LR, LR, LR / 2, LR / 2, LR / 4, LR / 4]


def test_lr_is_clamped_to_lr_min_and_lr_max():
    c = cfg(lr_window=2, lr_stall_factor=0.5, lr_min=8e-4)
    lr, rules = next_lr([rec(0, 1.0), rec(1, 1.0)], c, LR)
    assert lr == 8e-4 and rules[0].endswith("lr 0.001 -> 0.0008 (clamped to lr_min)")
    lr, rules = next_lr([rec(0, 1.0, lr=2.0), rec(1, 1.0, lr=2.0)], cfg(lr_window=2, lr_max=0.5), 2.0)
    assert lr == 0.5 and rules[0].endswith("(clamped to lr_max)")


def test_lr_trend_from_a_zero_loss_is_undefined_and_a_nan_loss_diverges():
    c = cfg(lr_window=2, lr_diverge_factor=0.25)
    assert next_lr([rec(0, 0.0), rec(1, 1.0)], c, LR) == (LR, [])
    assert next_lr([rec(0, 1.0), rec(1, math.nan)], c, LR)[0] == LR * 0.25


# --- per-participant boost -----------------------------------------------------------------------------


def test_a_lagging_participant_is_boosted_and_the_others_get_the_server_lr():
    losses = {"a": 1.0, "b": 1.0, "c": 4.0}  # mean 2, limit 1.5 x 2 = 3
    boosted, rules = boosts([rec(1, None, losses)], cfg(boost_k=1.5, boost_factor=2.0), LR)
    assert boosted == {"c": 2 * LR}
    assert rules == ["lr boost: c loss 4 > 1.5 x mean 2, lr 0.001 -> 0.002"]
    decision = decide([rec(1, None, losses)], cfg(lr_boost=True, boost_factor=2.0), base_mu=MU, base_lr=LR)
    assert (decision.lr_for("c"), decision.lr_for("a"), decision.lr_for("newcomer")) == (2 * LR, LR, LR)


def test_a_loss_exactly_at_k_times_the_mean_is_not_boosted():
    assert boosts([rec(1, None, {"a": 1.0, "b": 3.0})], cfg(boost_k=1.5), LR) == ({}, [])
    assert boosts([rec(1, None, {"solo": 5.0})], cfg(boost_k=1.0), LR) == ({}, [])


@pytest.mark.parametrize(
    "losses", [{"a": 0.0, "b": 0.0}, {"a": -1.0, "b": -9.0}, {"a": 1.0, "b": math.inf}, {"a": math.nan}]
)
def test_no_boost_without_a_positive_finite_mean(losses):
    assert boosts([rec(1, None, losses)], cfg(boost_k=1.0), LR) == ({}, [])


def test_no_boost_when_the_last_record_has_no_losses():
    assert boosts([rec(1, None, {"a": 1.0, "b": 9.0}), rec(2, 1.0)], cfg(boost_k=1.0), LR) == ({}, [])


def test_boost_starts_from_the_adjusted_server_lr_and_is_clamped_to_lr_max():
    history = [rec(0, 1.0, {"a": 1.0, "b": 1.0, "c": 4.0}), rec(1, 1.0, {"a": 1.0, "b": 1.0, "c": 4.0})]
    c = cfg(lr_adjust=True, lr_window=2, lr_stall_factor=0.5, lr_boost=True, boost_factor=4.0, lr_max=1.5e-3)
    decision = decide(history, c, base_mu=MU, base_lr=LR)
    assert decision.lr == LR / 2
    assert decision.lr_per_participant == {"c": 1.5e-3}  # 4 x 0.0005 = 0.002, clamped to 0.0015
    assert decision.rules[-1].endswith("(clamped to lr_max)")


# --- spike guard ---------------------------------------------------------------------------------------


def spiking_history():
    # the mu, LR and boost rules would all fire on the last round
    return [
        rec(0, 1.0, WIDE, mu=0.02, lr=5e-4),
        rec(1, 0.8, WIDE, mu=0.02, lr=5e-4),
        rec(2, 2.0, {"a": 1.0, "b": 1.0, "c": 9.0}, mu=0.02, lr=5e-4),
    ]


def test_a_spike_holds_every_adjustment():
    c = cfg(**{**ALL_ON, "spike_rollback": False}, lr_window=2, spike_threshold=0.5)
    decision = decide(spiking_history(), c, base_mu=MU, base_lr=LR)
    assert (decision.mu, decision.lr, decision.lr_per_participant) == (0.02, 5e-4, {})
    assert decision.hold is True and decision.rollback is False
    assert decision.rules == [
        "spike guard: eval loss 2 is +150.00% over the best 0.8 of the last 2 evaluations (> 50.00%), "
        "holding mu and lr"
    ]
    # without the guard the same history changes mu, lr and boosts
    unguarded = decide(
        spiking_history(), cfg(**{**ALL_ON, "spike_guard": False}, lr_window=2), base_mu=MU, base_lr=LR
    )
    assert unguarded.mu != 0.02 and unguarded.lr != 5e-4 and unguarded.lr_per_participant
    assert not unguarded.hold and not unguarded.rollback


def test_a_spike_with_rollback_asks_for_the_best_model():
    decision = decide(spiking_history(), cfg(spike_guard=True, spike_rollback=True), base_mu=MU, base_lr=LR)
    assert decision.hold and decision.rollback
    assert decision.rules[0].endswith("holding mu and lr, rolling back to the best model")


def test_a_rise_exactly_at_the_spike_threshold_does_not_fire():
    c = cfg(spike_threshold=0.5)
    assert spike([rec(0, 0.5), rec(1, 0.75)], c) is None
    assert spike([rec(0, 0.5), rec(1, 0.76)], c) is not None


def test_the_spike_is_measured_against_the_best_of_the_last_window_evaluations():
    history = [rec(0, 0.5), rec(1, 1.0), rec(2, None), rec(3, 1.0), rec(4, 1.4)]
    assert spike(history, cfg(spike_threshold=0.5, spike_window=2)) is None  # best of 1.0, 1.0
    assert "best 0.5 of the last 3 evaluations" in spike(history, cfg(spike_threshold=0.5, spike_window=3))


def test_no_spike_without_an_earlier_evaluation_or_a_new_one():
    c = cfg(spike_threshold=0.1)
    assert spike([rec(0, None, WIDE), rec(1, 5.0, WIDE)], c) is None
    assert spike([rec(0, 1.0), rec(1, 5.0), rec(2, None, WIDE)], c) is None
    assert spike([rec(0, 0.0), rec(1, 5.0)], c) is None  # a rise from a zero loss has no relative size
    assert spike([rec(0, 1.0), rec(1, math.nan)], c) is not None


def test_decision_metrics_are_json_ready():
    decision = Decision(mu=0.02, lr=LR, lr_per_participant={"b": 2e-3, "a": 3e-3}, rules=["x"], hold=True)
    assert decision.to_record().to_json() == {
        "mu": 0.02,
        "lr": LR,
        "lr_per_participant": {"a": 3e-3, "b": 2e-3},
        "adaptive_rules": ["x"],
        "adaptive_hold": True,
        "adaptive_rollback": False,
    }
