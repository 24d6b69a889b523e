import math

import pytest
import torch

from zk0.training.proximal import distance, proximal_term, snapshot
from zk0.training.schedules import ScheduleSpec, make_scheduler


def test_proximal_loss_and_gradient_equal_the_formula():
    torch.manual_seed(0)
    params = [torch.randn(4, 3, requires_grad=True), torch.randn(5, requires_grad=True)]
    anchor = snapshot(params)
    with torch.no_grad():
        for p in params:
            p.add_(torch.randn_like(p))
    mu = 0.37
    term = proximal_term(params, anchor, mu)
    expected = mu / 2 * sum(((p - a) ** 2).sum() for p, a in zip(params, anchor, strict=True))
    assert torch.allclose(term, expected)
    term.backward()
    for p, a in zip(params, anchor, strict=True):
        assert torch.allclose(p.grad, mu * (p.detach() - a))


def test_anchor_is_detached_and_does_not_follow_the_weights():
    p = torch.ones(3, requires_grad=True)
    (anchor,) = snapshot([p])
    assert not anchor.requires_grad
    with torch.no_grad():
        p.add_(1.0)
    assert torch.equal(anchor, torch.ones(3))
    assert math.isclose(distance([p], [anchor]), math.sqrt(3))


def test_bf16_parameters_accumulate_in_fp32():
    p = torch.full((1000,), 1.0, dtype=torch.bfloat16)
    a = torch.zeros(1000, dtype=torch.bfloat16)
    term = proximal_term([p], [a], 2.0)
    assert term.dtype == torch.float32
    assert term.item() == pytest.approx(1000.0)


def lrs_over(schedule: str, steps: int, *, lr=1.0, losses=None) -> list[float]:
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)
    spec = ScheduleSpec(schedule, steps, min_lr=0.01, restart_steps=4, plateau_factor=0.5, plateau_patience=1)
    sched = make_scheduler(opt, spec)["scheduler"]
    seen = []
    for i in range(steps):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        if schedule == "plateau":
            sched.step(losses[i])
        else:
            sched.step()
    return seen


@pytest.mark.parametrize("schedule", ["cosine", "cosine_restarts", "plateau"])
def test_each_schedule_restarts_from_the_round_lr(schedule):
    losses = [1.0] * 12  # a flat loss makes the plateau schedule decay
    first = lrs_over(schedule, 12, losses=losses)
    assert first[0] == 1.0 and min(first) < 1.0
    second = lrs_over(schedule, 12, lr=0.5, losses=losses)
    assert second[0] == 0.5
    assert second == pytest.approx([x * 0.5 for x in first], abs=0.01)


def test_cosine_decays_to_min_over_the_round_and_restarts_recur():
    cos = lrs_over("cosine", 10)
    assert cos == sorted(cos, reverse=True)
    assert cos[-1] < 0.1
    restarts = lrs_over("cosine_restarts", 12)
    assert restarts[0] == restarts[4] == restarts[8] == 1.0
