"""The participant's trainer on a real tiny SmolVLA and a generated LeRobot dataset."""

import copy
import dataclasses
import shutil
import time

import pytest
import torch
from accelerate import Accelerator
from conftest import small_config
from lerobot.datasets.factory import resolve_delta_timestamps
from lerobot.scripts.lerobot_train import update_policy
from lerobot.utils.logging_utils import AverageMeter, MetricsTracker

from zk0.data import open_dataset, open_source, resolve_spec, training_split
from zk0.policy import build_policy, load_trainable_state, trainable_state
from zk0.training.datamodule import BAD_FRAMES_KEY, BadDataError, BadFrame, LeRobotDataModule
from zk0.training.lightning_module import RoundPlan, SmolVLAModule
from zk0.training.local_training import DeadlinePassed, LocalTrainer, resolve_precision


@pytest.fixture(scope="module")
def setup(demo_root):
    config = small_config(demo_root)
    source = open_source("demo:p0", config)
    torch.manual_seed(0)
    bundle = build_policy(config.model, source.meta, source.meta.stats, device="cpu", demo_root=demo_root)
    delta = resolve_delta_timestamps(bundle.policy.config, source.meta)
    train, _ = training_split(source, heldout=1, delta_timestamps=delta)
    return config, bundle, train


def make_trainer(config, bundle, dataset, *, max_bad=10):
    train_cfg = dataclasses.replace(config.train, max_bad_batches=max_bad)
    module = SmolVLAModule(bundle, train_cfg, source="test")
    dm = LeRobotDataModule(dataset, batch_size=config.train.batch_size, num_workers=0)
    return LocalTrainer(module, dm, device="cpu", precision="auto", progress=False)


def first_batch(trainer: LocalTrainer, seed: int) -> dict:
    trainer.datamodule.set_seed(seed)
    batch = next(iter(trainer.datamodule.train_dataloader()))
    batch.pop(BAD_FRAMES_KEY)
    return batch


def test_mu_zero_step_is_lerobots_update_policy(setup):
    config, bundle, train = setup
    start = trainable_state(bundle.policy)
    ours = make_trainer(config, bundle, train)
    batch = first_batch(ours, seed=5)

    theirs = copy.deepcopy(bundle.policy)
    optimizer = theirs.config.get_optimizer_preset().build(
        [p for p in theirs.parameters() if p.requires_grad]
    )
    optimizer.param_groups[0]["lr"] = config.train.lr
    metrics = MetricsTracker(
        4,
        100,
        1,
        {
            "loss": AverageMeter("loss"),
            "grad_norm": AverageMeter("g"),
            "lr": AverageMeter("lr"),
            "update_s": AverageMeter("s"),
        },
    )
    torch.manual_seed(5)
    update_policy(metrics, theirs, bundle.preprocessor(dict(batch)), optimizer, 10.0, Accelerator(cpu=True))

    result = ours.train_round(RoundPlan(lr=config.train.lr, mu=0.0, steps=1), seed=5)
    assert result.steps == 1 and result.proximal_loss == 0.0
    after_ours = trainable_state(bundle.policy)
    after_theirs = trainable_state(theirs)
    moved = 0
    for name, value in after_ours.items():
        torch.testing.assert_close(value, after_theirs[name], rtol=0, atol=1e-6, msg=name)
        moved += int(not torch.equal(value, start[name]))
    assert moved > 0
    load_trainable_state(bundle.policy, start)


def test_proximal_term_enters_the_loss_and_pulls_towards_the_anchor(setup):
    config, bundle, train = setup
    start = trainable_state(bundle.policy)
    trainer = make_trainer(config, bundle, train)
    free = trainer.train_round(RoundPlan(lr=1e-2, mu=0.0, steps=4), seed=1)
    load_trainable_state(bundle.policy, start)
    held = trainer.train_round(RoundPlan(lr=1e-2, mu=100.0, steps=4), seed=1)
    load_trainable_state(bundle.policy, start)
    assert free.proximal_loss == 0.0
    assert held.proximal_loss > 0.0
    assert held.update_norm < free.update_norm
    assert held.samples == 4 * config.train.batch_size


def test_rounds_restart_the_lr_schedule_and_are_seeded(setup):
    config, bundle, train = setup
    start = trainable_state(bundle.policy)
    trainer = make_trainer(config, bundle, train)
    a = trainer.train_round(RoundPlan(lr=1e-3, mu=0.0, steps=3), seed=7)
    b = trainer.train_round(RoundPlan(lr=5e-4, mu=0.0, steps=3), seed=7)
    assert a.lr_first == pytest.approx(1e-3) and b.lr_first == pytest.approx(5e-4)
    assert a.lr_last < a.lr_first
    load_trainable_state(bundle.policy, start)
    again = trainer.train_round(RoundPlan(lr=1e-3, mu=0.0, steps=3), seed=7)
    load_trainable_state(bundle.policy, start)
    assert again.policy_loss == a.policy_loss
    assert again.update_norm == a.update_norm


def test_a_passed_deadline_stops_training_before_the_next_step_and_the_trainer_goes_on(setup):
    config, bundle, train = setup
    start = trainable_state(bundle.policy)
    trainer = make_trainer(config, bundle, train)
    with pytest.raises(DeadlinePassed, match=r"^the round's deadline passed after 0 of 1000 steps$"):
        trainer.train_round(RoundPlan(lr=1e-3, mu=0.0, steps=1000), seed=7, deadline=time.monotonic())
    assert all(torch.equal(trainable_state(bundle.policy)[n], t) for n, t in start.items())
    far = trainer.train_round(RoundPlan(lr=1e-3, mu=0.0, steps=2), seed=7, deadline=time.monotonic() + 3600)
    load_trainable_state(bundle.policy, start)
    none = trainer.train_round(RoundPlan(lr=1e-3, mu=0.0, steps=2), seed=7)
    load_trainable_state(bundle.policy, start)
    assert far.steps == none.steps == 2 and far.policy_loss == none.policy_loss


def test_precision_setting_reaches_the_trainer(setup):
    config, bundle, train = setup
    assert resolve_precision("auto", "cpu") == "32-true"
    assert resolve_precision("auto", "cuda") == "bf16-mixed"
    trainer = make_trainer(config, bundle, train)
    assert trainer.make_trainer(1).precision == "32-true"
    trainer.precision = resolve_precision("bf16-mixed", "cpu")
    assert trainer.make_trainer(1).precision == "bf16-mixed"


def test_undecodable_frames_are_skipped_up_to_the_bound(setup, tmp_path):
    config, bundle, train = setup
    start = trainable_state(bundle.policy)
    copy_dir = tmp_path / "broken"
    shutil.copytree(train.root, copy_dir)
    for video in (copy_dir / "videos").rglob("*.mp4"):
        video.write_bytes(video.read_bytes()[:200])  # truncated: no frame decodes any more
    delta = resolve_delta_timestamps(bundle.policy.config, train.meta)
    broken = open_dataset(resolve_spec(str(copy_dir), tmp_path), episodes=None, delta_timestamps=delta)
    trainer = make_trainer(config, bundle, broken, max_bad=3)
    with pytest.raises(BadDataError, match=r"test: 4 undecodable frames, more than train.max_bad_batches=3"):
        trainer.train_round(RoundPlan(lr=1e-3, mu=0.0, steps=2), seed=0)
    assert trainer.module.bad_frames.count == 4
    assert trainable_state(bundle.policy).keys() == start.keys()
    load_trainable_state(bundle.policy, start)


def test_a_few_bad_frames_are_skipped_and_training_goes_on(setup, tmp_path):
    config, bundle, train = setup
    start = trainable_state(bundle.policy)
    trainer = make_trainer(config, bundle, train, max_bad=3)
    trainer.module.bad_frames.record([BadFrame(index=17, error="FFmpegError: test")])
    result = trainer.train_round(RoundPlan(lr=1e-3, mu=0.0, steps=2), seed=0)
    assert result.steps == 2 and trainer.module.bad_frames.count == 1
    load_trainable_state(bundle.policy, start)
