"""A run's charts (evaluation loss per dataset and per participant; mu and lr per round), computed from its
metrics.jsonl records only (no gRPC, no torch). In zk0/ because both the coordinator and `zk0 centralized`
write them. A round may appear more than once in metrics.jsonl (redone after a failed attempt, or resumed):
the last aggregated record of a round wins (zk0.records.latest_rounds), as for every reader of the records.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from zk0.records import Best, RoundEntry, latest_rounds

EVAL_CHART = "eval_loss.png"
HYPERPARAMETERS_CHART = "hyperparameters.png"
# No "Software" (matplotlib version) in the PNG: the same records give the same bytes.
PNG_METADATA = {"Software": None}

# ---------------------------------------------------------------------------------------------- records


def number(value: Any) -> float | None:
    """A finite float, or None for what is absent, not a number, or not finite."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _metric(block: Any, key: str) -> float | None:
    return number(block.get(key)) if isinstance(block, Mapping) else None


def eval_series(kept: Mapping[int, RoundEntry], key: str) -> tuple[list[tuple[int, float]], dict]:
    """(composite points, {dataset: points}) of one evaluation metric over the evaluated rounds."""
    composite: list[tuple[int, float]] = []
    datasets: dict[str, list[tuple[int, float]]] = {}
    for round_idx, entry in kept.items():
        evaluation = entry.eval
        if evaluation is None:
            continue
        value = _metric(evaluation.composite, key)
        if value is not None:
            composite.append((round_idx, value))
        for name, metrics in sorted(evaluation.datasets.items()):
            value = _metric(metrics, key)
            if value is not None:
                datasets.setdefault(name, []).append((round_idx, value))
    return composite, datasets


def participant_series(kept: Mapping[int, RoundEntry], key: str) -> dict[str, list[tuple[int, float]]]:
    """{participant: points}: round r's participant_eval measured the model the round started from, so it is
    placed at the round that produced that model (found by base_version, which a rollback makes an earlier
    best round; r - 1 when the entry has no base_version or names an unknown one)."""
    round_of = {entry.version: round_idx for round_idx, entry in kept.items()}
    series: dict[str, list[tuple[int, float]]] = {}
    for round_idx, entry in kept.items():
        reports = entry.participant_eval
        if round_idx < 1 or reports is None:
            continue
        x = round_of.get(entry.base_version, round_idx - 1)
        for name, metrics in sorted(reports.items()):
            value = _metric(metrics, key)
            if value is not None:
                series.setdefault(name, []).append((x, value))
    return {name: sorted(points) for name, points in sorted(series.items())}


def _redone_rounds(entries: Sequence[RoundEntry], kept: Mapping[int, RoundEntry]) -> list[int]:
    """Rounds recorded more than once, or kept from an attempt after the first."""
    seen: dict[int, int] = {}
    for entry in entries:
        seen[entry.round] = seen.get(entry.round, 0) + 1
    return sorted(r for r in kept if seen.get(r, 0) > 1 or (kept[r].attempt or 1) > 1)


def best_record(
    entries: Sequence[RoundEntry], kept: Mapping[int, RoundEntry], best: Mapping | None
) -> Best | None:
    """The best model's record: as given, else the last one the run logged, else the evaluated round with
    the lowest composite loss."""
    if best:
        return Best.from_json(best)
    for entry in reversed(entries):
        if entry.best is not None:
            return entry.best
    composite, _ = eval_series(kept, "loss")
    if not composite:
        return None
    round_idx, loss = min(composite, key=lambda point: (point[1], point[0]))
    return Best(round_idx, kept[round_idx].version, loss)


def entry_of(
    entries: Sequence[RoundEntry], kept: Mapping[int, RoundEntry], best: Best | None
) -> RoundEntry | None:
    """The evaluated entry of the best model's version (the last one recorded), else the kept entry of its
    round."""
    if best is None:
        return None
    for entry in reversed(entries):
        if entry.version == best.version and entry.eval is not None:
            return entry
    for entry in reversed(entries):
        if entry.version == best.version:
            return entry
    return kept.get(best.round)


# ----------------------------------------------------------------------------------------------- charts


def _plot(ax, points: Sequence[tuple[int, float]], **style) -> None:
    if points:
        xs, ys = zip(*points, strict=True)
        ax.plot(xs, ys, **style)


def _style_axes(ax, *, xlabel: str, ylabel: str, title: str, values: Sequence[float]) -> None:
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(True, alpha=0.3)
    positive = [v for v in values if v > 0]
    if positive and len(positive) == len(values) and max(positive) / min(positive) > 20:
        ax.set_yscale("log")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small", loc="best")


def _empty(ax, title: str, message: str) -> None:
    ax.set_title(title)
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])


def _eval_panel(ax, kept, redone: Sequence[int], key: str, label: str) -> bool:
    """One metric's panel; False when there is nothing to plot."""
    composite, datasets = eval_series(kept, key)
    participants = participant_series(kept, key)
    values = [v for points in (composite, *datasets.values(), *participants.values()) for _, v in points]
    title = f"Evaluation {label} over rounds"
    if not values:
        _empty(ax, title, f"no {label} recorded")
        return False
    for name, points in datasets.items():
        _plot(ax, points, marker="o", linewidth=1.2, label=f"global model on {name}")
    _plot(ax, composite, marker="s", color="black", linewidth=2.2, label="global model, composite")
    for name, points in participants.items():
        _plot(ax, points, marker="^", linestyle="--", linewidth=1, alpha=0.8, label=f"{name} held-out (*)")
    for i, round_idx in enumerate(redone):
        ax.axvline(
            round_idx, color="grey", linestyle=":", linewidth=1, label="redone round" if i == 0 else None
        )
    xlabel = "round (the global model after that round; round 0 = the base model)"
    if participants:
        xlabel += (
            "\n(*) participant held-out loss of round r's starting model, plotted at r - 1 "
            "(at the best round after a rollback)"
        )
    _style_axes(ax, xlabel=xlabel, ylabel=label, title=title, values=values)
    return True


def _save(fig: Figure, path: Path) -> Path:
    fig.savefig(path, format="png", metadata=PNG_METADATA)
    return path


def write_charts(entries: Sequence[RoundEntry], out_dir: Path, *, run: str = "federated run") -> list[Path]:
    """Write eval_loss.png and hyperparameters.png into `out_dir`; returns their paths. `run` names the kind
    of run in the titles."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    entries = list(entries)
    kept = latest_rounds(entries)
    redone = _redone_rounds(entries, kept)

    has_mae = bool(eval_series(kept, "action_mae")[0] or any(eval_series(kept, "action_mae")[1].values()))
    has_mae = has_mae or any(participant_series(kept, "action_mae").values())
    fig = Figure(figsize=(10, 9.5 if has_mae else 5.5), dpi=100, layout="constrained")
    axes = fig.subplots(2 if has_mae else 1, 1, squeeze=False)[:, 0]
    _eval_panel(axes[0], kept, redone, "loss", "loss")
    if has_mae:
        _eval_panel(axes[1], kept, redone, "action_mae", "action MAE")
    fig.suptitle(f"zk0 {run}: evaluation")
    paths = [_save(fig, out_dir / EVAL_CHART)]

    fig = Figure(figsize=(10, 8), dpi=100, layout="constrained")
    mu_ax, lr_ax = fig.subplots(2, 1, sharex=True)
    trained = {r: e.hyperparameters for r, e in kept.items() if e.hyperparameters is not None}
    mu = [(r, v) for r, hp in trained.items() if (v := number(hp.mu)) is not None]
    lr = [(r, v) for r, hp in trained.items() if (v := number(hp.lr)) is not None]
    boosted: dict[str, list[tuple[int, float]]] = {}
    for r, hp in trained.items():
        for name, value in sorted((hp.lr_per_participant or {}).items()):
            if (value := number(value)) is not None:
                boosted.setdefault(name, []).append((r, value))
    xlabel = "round (hyperparameters the participants trained with)"
    if mu:
        _plot(mu_ax, mu, marker="o", color="tab:blue", label="mu (FedProx proximal weight)")
        _style_axes(mu_ax, xlabel=xlabel, ylabel="mu", title="Proximal weight mu per round", values=[])
    else:
        _empty(mu_ax, "Proximal weight mu per round", "no training round recorded")
    if lr:
        _plot(lr_ax, lr, marker="o", color="tab:orange", linewidth=2, label="server lr")
        for name, points in sorted(boosted.items()):
            _plot(lr_ax, points, marker="^", linestyle="--", label=f"boosted lr of {name}")
        for r, entry in kept.items():
            adaptive = entry.adaptive
            if adaptive is not None and (adaptive.rollback or adaptive.hold):
                rollback = adaptive.rollback
                what = "rollback to the best model after" if rollback else "spike guard hold"
                lr_ax.axvline(r, color="red", linestyle=":", linewidth=1, label=what)
        _style_axes(lr_ax, xlabel=xlabel, ylabel="learning rate", title="Learning rate per round", values=[])
        if all(v > 0 for _, v in lr) and all(v > 0 for p in boosted.values() for _, v in p):
            lr_ax.set_yscale("log")
    else:
        _empty(lr_ax, "Learning rate per round", "no training round recorded")
    fig.suptitle(f"zk0 {run}: hyperparameters")
    paths.append(_save(fig, out_dir / HYPERPARAMETERS_CHART))
    return paths


# ------------------------------------------------------------------------------------------- model card
