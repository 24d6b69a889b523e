"""Build SmolVLA (hub id, local pretrained directory, or the demo's tiny spec), select its trainable
tensors, and export/reload it in lerobot's `pretrained_model/` format."""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from lerobot.configs import PreTrainedConfig
from lerobot.datasets import LeRobotDatasetMetadata
from lerobot.policies.factory import make_policy, make_pre_post_processors
from lerobot.policies.smolvla import SmolVLAConfig, SmolVLAPolicy

from zk0 import hub
from zk0.config import ModelConfig
from zk0.errors import Zk0Error
from zk0.quiet import library_prints_logged_once
from zk0.tiny_vlm import VLM_IMAGE_SIZE, VLM_TEXT_LAYERS, ensure_vlm_assets

PREPROCESSOR_JSON = "policy_preprocessor.json"
EXPORTED_VLM_DIR = "vlm"


@dataclass
class PolicyBundle:
    """A policy with the processors that normalize and tokenize its inputs and unnormalize its outputs."""

    policy: SmolVLAPolicy
    preprocessor: Any
    postprocessor: Any


def resolve_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise Zk0Error(f"device '{name}' was asked for, but torch sees no CUDA device on this machine")
    return name


def smolvla_config(model: ModelConfig, *, device: str, demo_root: Path) -> SmolVLAConfig:
    """The policy config for `model.source`: fresh tiny config, or the pretrained config to fine-tune."""
    if model.source == "tiny":
        vlm_dir = ensure_vlm_assets(demo_root)
        cfg = SmolVLAConfig(
            vlm_model_name=str(vlm_dir),
            load_vlm_weights=False,
            resize_imgs_with_padding=(VLM_IMAGE_SIZE, VLM_IMAGE_SIZE),
            num_vlm_layers=VLM_TEXT_LAYERS,
            chunk_size=model.chunk_size,
            n_action_steps=model.n_action_steps,
            freeze_vision_encoder=model.freeze_vision_encoder,
            train_expert_only=model.train_expert_only,
            train_state_proj=model.train_state_proj,
            device=device,
            push_to_hub=False,
        )
        return cfg
    path = Path(model.source)
    if not path.is_dir():
        if not hub.looks_like_hub_id(model.source):
            raise Zk0Error(
                f"model.source '{model.source}' is neither 'tiny', a local directory, nor a hub id owner/name"
            )
        path = hub.fetch(model.source, what="model")
    if not (path / "config.json").is_file():
        raise Zk0Error(f"model.source '{model.source}' has no config.json: not a lerobot pretrained policy")
    cfg = PreTrainedConfig.from_pretrained(path)
    if not isinstance(cfg, SmolVLAConfig):
        raise Zk0Error(f"model.source '{model.source}' is a '{cfg.type}' policy, not smolvla")
    cfg.pretrained_path = path
    cfg.device = device
    cfg.push_to_hub = False
    cfg.chunk_size = model.chunk_size
    cfg.n_action_steps = model.n_action_steps
    cfg.freeze_vision_encoder = model.freeze_vision_encoder
    cfg.train_expert_only = model.train_expert_only
    cfg.train_state_proj = model.train_state_proj
    # Features come from our dataset, not the checkpoint's robot: make_policy fills them from ds_meta.
    cfg.input_features = {}
    cfg.output_features = {}
    return cfg


def build_policy(
    model: ModelConfig,
    meta: LeRobotDatasetMetadata,
    stats: dict[str, dict[str, Any]],
    *,
    device: str,
    demo_root: Path,
) -> PolicyBundle:
    """Policy + processors for one dataset layout; `stats` normalize it (each participant keeps its own)."""
    cfg = smolvla_config(model, device=device, demo_root=demo_root)
    with library_prints_logged_once():
        policy = make_policy(cfg, ds_meta=meta)
    preprocessor, postprocessor = make_pre_post_processors(cfg, dataset_stats=stats)
    return PolicyBundle(policy, preprocessor, postprocessor)


def trainable_names(policy: torch.nn.Module) -> list[str]:
    return [name for name, p in policy.named_parameters() if p.requires_grad]


def trainable_state(policy: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The tensors that train and travel, detached and copied to CPU in their native dtype."""
    return {name: p.detach().to("cpu", copy=True) for name, p in policy.named_parameters() if p.requires_grad}


def load_trainable_state(policy: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy `state` into the trainable parameters; names and shapes must match exactly."""
    params = {name: p for name, p in policy.named_parameters() if p.requires_grad}
    missing = sorted(set(params) - set(state))
    extra = sorted(set(state) - set(params))
    if missing or extra:
        raise Zk0Error(
            f"trainable state does not match the policy: {len(missing)} missing (e.g. {missing[:3]}), "
            f"{len(extra)} unexpected (e.g. {extra[:3]})"
        )
    with torch.no_grad():
        for name, p in params.items():
            src = state[name]
            if src.shape != p.shape:
                raise Zk0Error(f"trainable tensor '{name}': shape {tuple(src.shape)} != {tuple(p.shape)}")
            p.copy_(src.to(device=p.device, dtype=p.dtype))


def export_pretrained(bundle: PolicyBundle, out_dir: Path) -> Path:
    """Write a lerobot `pretrained_model/`-style directory that loads on another machine.

    A local VLM directory (the tiny demo's config/tokenizer/processor) is copied alongside as `vlm/` and
    referenced by that relative path, so nothing points at the writer's filesystem.
    """
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    bundle.policy.save_pretrained(tmp)
    bundle.preprocessor.save_pretrained(tmp)
    bundle.postprocessor.save_pretrained(tmp)
    vlm = Path(bundle.policy.config.vlm_model_name)
    if vlm.is_dir():
        shutil.copytree(vlm, tmp / EXPORTED_VLM_DIR)
        _rewrite_json(tmp / "config.json", lambda c: c.update(vlm_model_name=EXPORTED_VLM_DIR))
        _rewrite_json(tmp / PREPROCESSOR_JSON, _point_tokenizer_at(EXPORTED_VLM_DIR))
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.rename(out_dir)
    return out_dir


def load_exported(path: Path, *, device: str = "cpu") -> PolicyBundle:
    """Load an export with lerobot's own API, resolving a bundled `vlm/` against the export directory."""
    path = Path(path)
    cfg = PreTrainedConfig.from_pretrained(path)
    cfg.device = device
    overrides: dict[str, Any] = {"device_processor": {"device": device}}
    if (path / EXPORTED_VLM_DIR).is_dir():
        cfg.vlm_model_name = str(path / EXPORTED_VLM_DIR)
        overrides["tokenizer_processor"] = {"tokenizer_name": str(path / EXPORTED_VLM_DIR)}
    with library_prints_logged_once():
        policy = SmolVLAPolicy.from_pretrained(path, config=cfg, strict=True)
    preprocessor, postprocessor = make_pre_post_processors(
        cfg, pretrained_path=str(path), preprocessor_overrides=overrides
    )
    return PolicyBundle(policy, preprocessor, postprocessor)


def _point_tokenizer_at(tokenizer: str):
    def edit(pipeline: dict[str, Any]) -> None:
        for step in pipeline.get("steps", []):
            if step.get("registry_name") == "tokenizer_processor":
                step.setdefault("config", {})["tokenizer_name"] = tokenizer

    return edit


def _rewrite_json(path: Path, edit) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data, indent=4) + "\n")


def frozen_fingerprint(policy: torch.nn.Module) -> str:
    """SHA-256 over the frozen parameters (name, dtype, shape, bytes): equal backbones, equal fingerprints."""
    digest = hashlib.sha256()
    for name, p in sorted(policy.named_parameters()):
        if p.requires_grad:
            continue
        tensor = p.detach().to("cpu").contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
