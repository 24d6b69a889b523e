"""A hostile participant against each strategy, over real gRPC: three honest participants and one raw client
that uploads a valid-looking update (the honest mean delta, sign-flipped and scaled by 15, at the largest
sample count it may claim). Its distance passes the intake's screens, as a careful attacker's would.
Plain FedAvg's global model lands far from the honest mean; the robust strategies' stays within a stated
bound of it. The synthetic model keeps a round to milliseconds (see test_intake.py)."""

from __future__ import annotations

import pytest
import torch
from test_intake import MAX_SAMPLES, Federation, moved

from zk0.records import RoundEntry
from zk0.tensors import encode_state

HONEST = ("p0", "p1", "p2")
SCALE = 15.0  # its distance stays under the intake's 10 x median screen
CLIP = 3.0  # above every honest update's distance here (about 2.6), far below the hostile one's


def distance(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return sum(float((a[n].float() - b[n].float()).square().sum()) for n in a) ** 0.5


def envelope(updates: dict[str, dict[str, torch.Tensor]], mean: dict[str, torch.Tensor]) -> float:
    """The L2 norm of the honest updates' coordinate-wise envelope around their mean: a coordinate-wise rule
    whose every value lies within the honest values (as the median and the trimmed mean of 3 honest + 1
    hostile do) is at most this far from the honest mean."""
    total = 0.0
    for n, m in mean.items():
        total += float(
            torch.stack([(u[n].float() - m).abs() for u in updates.values()]).amax(0).square().sum()
        )
    return total**0.5


def play_round(tmp_path, strategy: str) -> tuple[dict, dict, dict, RoundEntry, float]:
    """(the global model after one round, the honest mean, the base model, the round's entry, the honest
    updates' envelope)."""
    fed = Federation(
        tmp_path,
        f"federation.strategy='{strategy}'",
        "federation.min_participants=4",
        "federation.min_updates=4",
        f"strategy.clip_norm={CLIP}",
    )
    try:
        fed.start(*HONEST, "evil")
        honest = {name: moved(fed.base, seed=i + 1) for i, name in enumerate(HONEST)}
        mean = {n: torch.stack([u[n].float() for u in honest.values()]).mean(0) for n in fed.base}
        evil = {n: (t.float() - SCALE * (mean[n] - t.float())).to(t.dtype) for n, t in fed.base.items()}
        for name, update in [*honest.items(), ("evil", evil)]:
            payload = encode_state(update)
            reply = fed.upload(fed.header(name, fed.task(name), payload, sample_count=MAX_SAMPLES), payload)
            assert reply.accepted, (name, reply.reason)
        entry = fed.finish()
        return fed.global_state(), mean, fed.base, entry, envelope(honest, mean)
    finally:
        fed.close()


@pytest.mark.slow
def test_one_hostile_participant_of_four_moves_fedavg_far_and_no_robust_strategy(tmp_path):
    off, entries = {}, {}
    for strategy in ("fedavg", "median", "trimmed_mean", "norm_bounded"):
        (tmp_path / strategy).mkdir()
        model, honest_mean, base, entries[strategy], bound = play_round(tmp_path / strategy, strategy)
        off[strategy] = distance(model, honest_mean)
    step = distance(base, honest_mean)  # how far the honest participants moved the model together
    # dragged along the hostile delta, past the base model: (3 - SCALE) / 4 of the honest step, ideally
    assert off["fedavg"] > 3 * step, off
    assert off["median"] <= bound, (off, bound)  # within the honest values at every coordinate
    assert off["trimmed_mean"] <= bound, (off, bound)
    assert off["norm_bounded"] < step + CLIP / 4 + 1e-3, off  # the hostile weight share x the clip norm
    assert entries["norm_bounded"].aggregation["clipped"].keys() == {"evil"}
    assert entries["trimmed_mean"].aggregation["trimmed_each_end"] == 1
    assert all(e.aggregation["strategy"] == s for s, e in entries.items())


@pytest.mark.parametrize("strategy", ["fedadam", "fedyogi"])
def test_server_optimizers_run_a_round_over_grpc_and_save_their_moments(tmp_path, strategy):
    model, honest_mean, base, entry, _ = play_round(tmp_path, strategy)
    eta = 0.03 * (1 - 0.99) ** 0.5 / (1 - 0.9)  # configs/demo.toml's strategy.eta, bias-corrected, step 1
    assert entry.aggregation == {"strategy": strategy, "server_step": 1, "eta": pytest.approx(eta)}
    moments = list((tmp_path / "run" / "models").glob("round-0001.strategy.safetensors"))
    assert moments, "the server state was not saved with the round's model"
    assert distance(model, base) > 0
