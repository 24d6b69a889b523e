"""Learning quality, measured: every trained model judged the same way on the held-out evaluation data.

Each model (federated FedAvg/FedProx, centralized, each participant alone, and the initial model) is loaded
into one evaluation policy built like the coordinator's (same seed, same normalization from the evaluation
data), so only the trained weights differ between rows, and evaluated with the same seeds and batch order.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch.utils.data import Dataset

from zk0.config import EvalConfig
from zk0.evaluation import evaluate_all
from zk0.policy import PolicyBundle, load_trainable_state, trainable_names

TOLERANCE = 0.10  # federated within 10% of centralized


@dataclass
class Row:
    name: str
    kind: str  # initial | federated | centralized | local
    samples: int  # training samples seen (optimizer steps x batch size, summed over participants)
    loss: float = 0.0
    action_mae: float = float("nan")
    datasets: dict[str, float] = field(default_factory=dict)


def trainable_from(path: Path, policy: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The trainable tensors from a zk0 model file or from a lerobot export's model.safetensors."""
    saved = load_file(str(path))
    return {name: saved[name] for name in trainable_names(policy)}


def score(
    row: Row,
    state: Mapping[str, torch.Tensor],
    bundle: PolicyBundle,
    datasets: Mapping[str, Dataset],
    cfg: EvalConfig,
) -> Row:
    load_trainable_state(bundle.policy, dict(state))
    result = evaluate_all(bundle, datasets, cfg)
    row.loss = result["composite"]["loss"]
    row.action_mae = result["composite"].get("action_mae", float("nan"))
    row.datasets = {name: m["loss"] for name, m in result["datasets"].items()}
    return row


def table(rows: list[Row]) -> str:
    """A Markdown table, best loss first after the initial model."""
    names = list(rows[0].datasets)
    head = "| model | kind | samples | eval loss | action MAE | " + " | ".join(names) + " |"
    rule = "|---|---|---:|---:|---:|" + "---:|" * len(names)
    ordered = [r for r in rows if r.kind == "initial"] + sorted(
        (r for r in rows if r.kind != "initial"), key=lambda r: r.loss
    )
    lines = [head, rule]
    for r in ordered:
        per = " | ".join(f"{r.datasets[n]:.4f}" for n in names)
        lines.append(f"| {r.name} | {r.kind} | {r.samples} | {r.loss:.4f} | {r.action_mae:.3f} | {per} |")
    return "\n".join(lines)


def verdict(rows: list[Row]) -> list[tuple[bool, str]]:
    """The issue's expectations, each as (held, sentence)."""
    initial = next(r for r in rows if r.kind == "initial")
    central = next(r for r in rows if r.kind == "centralized")
    locals_ = [r for r in rows if r.kind == "local"]
    checks = []
    for fed in (r for r in rows if r.kind == "federated"):
        checks.append(
            (
                fed.loss < initial.loss,
                f"{fed.name} ({fed.loss:.4f}) below the initial model ({initial.loss:.4f})",
            )
        )
        best_local = min(locals_, key=lambda r: r.loss)
        checks.append(
            (
                all(fed.loss < r.loss for r in locals_),
                f"{fed.name} below every local-only model (best: {best_local.name} {best_local.loss:.4f})",
            )
        )
        gap = fed.loss / central.loss - 1
        checks.append(
            (
                gap <= TOLERANCE,
                f"{fed.name} within {TOLERANCE:.0%} of centralized ({central.loss:.4f}): {gap:+.1%}",
            )
        )
    return checks
