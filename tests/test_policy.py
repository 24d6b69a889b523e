"""Building SmolVLA, selecting its trainable tensors, and the lerobot-format export round trip."""

import shutil
from pathlib import Path

import pytest
import torch
from conftest import small_config
from lerobot.configs import PreTrainedConfig
from lerobot.datasets.factory import resolve_delta_timestamps
from lerobot.policies.factory import make_pre_post_processors
from lerobot.policies.smolvla import SmolVLAPolicy
from torch.utils.data import DataLoader

from zk0.config import ModelConfig
from zk0.data import open_source, training_split
from zk0.errors import Zk0Error
from zk0.policy import (
    build_policy,
    export_pretrained,
    load_exported,
    load_trainable_state,
    smolvla_config,
    trainable_names,
    trainable_state,
)


@pytest.fixture(scope="module")
def built(demo_root):
    config = small_config(demo_root)
    source = open_source("demo:p1", config)
    torch.manual_seed(0)
    bundle = build_policy(config.model, source.meta, source.meta.stats, device="cpu", demo_root=demo_root)
    delta = resolve_delta_timestamps(bundle.policy.config, source.meta)
    _, held = training_split(source, heldout=1, delta_timestamps=delta)
    raw = next(iter(DataLoader(held, batch_size=3, shuffle=False)))
    return bundle, raw


def predict(policy, preprocessor, postprocessor, raw, noise):
    batch = preprocessor(dict(raw))
    policy.reset()
    return postprocessor(policy.predict_action_chunk(batch, noise=noise.clone()))


def test_trainable_tensors_follow_lerobots_freeze_flags(built):
    bundle, _ = built
    names = trainable_names(bundle.policy)
    assert names and all("vision_model" not in n for n in names)
    assert any("lm_expert" in n for n in names)
    assert any("state_proj" in n for n in names)
    frozen = [n for n, p in bundle.policy.named_parameters() if not p.requires_grad]
    assert frozen and set(frozen).isdisjoint(names)
    state = trainable_state(bundle.policy)
    assert list(state) == names and all(t.device.type == "cpu" for t in state.values())


def test_load_trainable_state_checks_names_and_shapes(built):
    bundle, _ = built
    state = trainable_state(bundle.policy)
    name = next(iter(state))
    with pytest.raises(Zk0Error, match="1 missing"):
        load_trainable_state(bundle.policy, {k: v for k, v in state.items() if k != name})
    bad = dict(state)
    bad[name] = torch.zeros(3, 3)
    with pytest.raises(Zk0Error, match=f"trainable tensor '{name}': shape"):
        load_trainable_state(bundle.policy, bad)
    load_trainable_state(bundle.policy, state)


def test_export_reloads_with_lerobots_api_elsewhere_and_predicts_the_same(built, tmp_path, monkeypatch):
    bundle, raw = built
    with torch.no_grad():  # move away from the init so a silently skipped load would show
        for p in bundle.policy.parameters():
            if p.requires_grad:
                p.add_(0.01)
    noise = torch.randn(3, bundle.policy.config.chunk_size, bundle.policy.config.max_action_dim)
    expected = predict(bundle.policy, bundle.preprocessor, bundle.postprocessor, raw, noise)

    written = export_pretrained(bundle, tmp_path / "a" / "final")
    assert {"config.json", "model.safetensors", "policy_preprocessor.json", "vlm"} <= {
        p.name for p in written.iterdir()
    }
    assert str(tmp_path) not in (written / "config.json").read_text()
    assert str(tmp_path) not in (written / "policy_preprocessor.json").read_text()
    moved = shutil.move(written, tmp_path / "elsewhere")
    shutil.rmtree(tmp_path / "a")

    monkeypatch.chdir(moved)  # lerobot's plain API, relative vlm/ resolved from the export directory
    cfg = PreTrainedConfig.from_pretrained(moved)
    policy = SmolVLAPolicy.from_pretrained(moved, strict=True)
    pre, post = make_pre_post_processors(cfg, pretrained_path=str(moved))
    torch.testing.assert_close(predict(policy, pre, post, raw, noise), expected, rtol=0, atol=0)

    monkeypatch.chdir(tmp_path)  # from anywhere, through the helper that resolves vlm/ for lerobot
    again = load_exported(Path(moved))
    got = predict(again.policy, again.preprocessor, again.postprocessor, raw, noise)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_hub_model_offline_is_one_clear_line(tmp_path):
    with pytest.raises(Zk0Error) as info:
        smolvla_config(ModelConfig(source="lerobot/smolvla_base"), device="cpu", demo_root=tmp_path)
    message = str(info.value)
    assert "\n" not in message
    assert "lerobot/smolvla_base" in message and "not reachable" in message


def test_bad_model_sources_are_refused(tmp_path):
    with pytest.raises(Zk0Error, match="neither 'tiny', a local directory, nor a hub id"):
        smolvla_config(ModelConfig(source="not a model"), device="cpu", demo_root=tmp_path)
    with pytest.raises(Zk0Error, match="has no config.json"):
        smolvla_config(ModelConfig(source=str(tmp_path)), device="cpu", demo_root=tmp_path)
