"""A run's reports (federated, or the centralized baseline), computed from its metrics.jsonl records only
(no gRPC, no torch): the charts (evaluation loss per dataset and per participant; mu and lr per round) and
the model card of final/. In zk0/ because both the coordinator and `zk0 centralized` write them.

A round may appear more than once in metrics.jsonl (redone after a failed attempt, or resumed): the last
aggregated record of a round wins (zk0.records.latest_rounds), as for every reader of the records.
"""

from __future__ import annotations

import json
import math
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from zk0.hub import DEMO_OWNER, is_hub_dataset_id, looks_like_hub_id
from zk0.records import Best, Evaluation, RoundEntry, latest_rounds

EVAL_CHART = "eval_loss.png"
HYPERPARAMETERS_CHART = "hyperparameters.png"
# No "Software" (matplotlib version) in the PNG: the same records give the same bytes.
PNG_METADATA = {"Software": None}
CARD_TAGS = ("lerobot", "smolvla", "robotics", "federated-learning")

# ---------------------------------------------------------------------------------------------- records


def _number(value: Any) -> float | None:
    """A finite float, or None for what is absent, not a number, or not finite."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _metric(block: Any, key: str) -> float | None:
    return _number(block.get(key)) if isinstance(block, Mapping) else None


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


def _best_record(
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


def _entry_of(
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
    mu = [(r, v) for r, hp in trained.items() if (v := _number(hp.mu)) is not None]
    lr = [(r, v) for r, hp in trained.items() if (v := _number(hp.lr)) is not None]
    boosted: dict[str, list[tuple[int, float]]] = {}
    for r, hp in trained.items():
        for name, value in sorted((hp.lr_per_participant or {}).items()):
            if (value := _number(value)) is not None:
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


def _fmt(value: Any) -> str:
    number = _number(value)
    if number is None:
        return "–" if value is None else _cell(value)
    if float(number).is_integer() and isinstance(value, int):
        return str(int(number))
    return f"{number:.4g}"


def _cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def _table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += [
        "| " + " | ".join(_fmt(v) if not isinstance(v, str) else _cell(v) for v in row) + " |" for row in rows
    ]
    return "\n".join(lines)


def _features(features: Any) -> str:
    if isinstance(features, Mapping):
        return ", ".join(str(k) for k in features)
    if isinstance(features, list | tuple):
        return ", ".join(str(f.get("name", f)) if isinstance(f, Mapping) else str(f) for f in features)
    return "" if features is None else str(features)


PRIVATE_DATASET = "local dataset"


def _published_dataset(repo_id: Any) -> str:
    """What the card may say about a participant's dataset: a hub id, "demo", or only that it is local (a
    local directory's name or path is the participant's business, not the public card's)."""
    if repo_id is None:
        return "–"
    repo_id = str(repo_id)
    if is_hub_dataset_id(repo_id):
        return repo_id
    if repo_id.startswith(("demo:", f"{DEMO_OWNER}/")):
        return repo_id
    return PRIVATE_DATASET


def _eval_at(entry: RoundEntry | None) -> Evaluation:
    """The entry's evaluation; an empty one for an entry not evaluated (or none)."""
    if entry is None or entry.eval is None:
        return Evaluation({}, {})
    return entry.eval


def _front_matter(base_model: str, dataset_ids: Sequence[str]) -> str:
    lines = ["---", "library_name: lerobot", "pipeline_tag: robotics", "tags:"]
    lines += [f"- {tag}" for tag in CARD_TAGS]
    if looks_like_hub_id(base_model):
        lines.append(f"base_model: {json.dumps(base_model)}")
    if dataset_ids:
        lines.append("datasets:")
        lines += [f"- {json.dumps(d)}" for d in dataset_ids]
    lines.append("---")
    return "\n".join(lines)


def model_card(
    *,
    config_toml: str,
    entries: Sequence[RoundEntry],
    participants: Mapping[str, Mapping[str, Any]],
    eval_datasets: Mapping[str, Mapping[str, Any]],
    base_model: str,
    final_version: str,
    best: Mapping[str, Any] | None,
    centralized: bool = False,
) -> str:
    """The README.md of final/: hub front matter, what the model is, data, metrics, config, how to load it.
    `centralized`: the baseline trained in one place on the union of `participants`' datasets."""
    entries = list(entries)
    kept = latest_rounds(entries)
    try:
        config = tomllib.loads(config_toml)
    except tomllib.TOMLDecodeError:
        config = {}
    federation = config.get("federation", {})
    train = config.get("train", {})
    strategy = str(federation.get("strategy", "fedprox"))
    configured_mu = _number(federation.get("mu"))
    trained = [e.hyperparameters for r, e in kept.items() if r > 0 and e.hyperparameters is not None]
    mus = [v for hp in trained if (v := _number(hp.mu)) is not None]
    lrs = [v for hp in trained if (v := _number(hp.lr)) is not None]

    final_entry = next((e for e in reversed(kept.values()) if e.version == final_version), None)
    final_round = final_entry.round if final_entry else (max(kept) if kept else 0)
    final_eval_round = max((r for r in kept if r <= final_round and kept[r].eval is not None), default=None)
    best_record = _best_record(entries, kept, best)
    best_entry = _entry_of(entries, kept, best_record)
    base_entry = kept.get(0)

    names = sorted(set(participants) | {n for e in kept.values() for n in e.updates or {}})
    contributed = {n: sum(n in (e.updates or {}) for e in kept.values()) for n in names}
    dataset_ids = sorted(
        {str(d.get("repo_id")) for d in (*participants.values(), *eval_datasets.values()) if d.get("repo_id")}
    )
    dataset_ids = [d for d in dataset_ids if is_hub_dataset_id(d)]

    if centralized:
        how = "none, centralized: one model trained in one place on the union of the datasets"
        mu_text = "mu = 0"
        strategy = "centralized"
    elif strategy == "fedprox":
        how = "FedProx: each participant adds the proximal term mu/2 * ||w - w_global||^2 to its local loss"
        mu_text = f"mu = {_fmt(configured_mu)}"
        if mus and (min(mus) != max(mus) or (configured_mu is not None and mus[0] != configured_mu)):
            mu_text += f" (adapted during the run: {_fmt(min(mus))} to {_fmt(max(mus))})"
    else:
        how = "FedAvg: participants train on their own loss only (mu = 0)"
        mu_text = "mu = 0"
    completed = max((r for r in kept if r > 0), default=0)
    configured_rounds = federation.get("rounds")

    out = [_front_matter(base_model, dataset_ids), ""]
    out.append(
        "# SmolVLA fine-tuned with zk0: centralized baseline"
        if centralized
        else "# SmolVLA fine-tuned federatedly with zk0"
    )
    out.append("")
    if centralized:
        out.append(
            "A [SmolVLA](https://huggingface.co/docs/lerobot/smolvla) robot policy fine-tuned with zk0 as "
            f"the centralized baseline of a federated run: one trainer on the union of {len(names)} "
            "dataset(s), with the federated run's budget (the same samples over the same optimizer steps), "
            f"over {completed} round(s), evaluated exactly like the federated run's global model."
        )
    else:
        out.append(
            "A [SmolVLA](https://huggingface.co/docs/lerobot/smolvla) robot policy fine-tuned by federated "
            f"learning with zk0: {len(names)} participant(s) trained it on their own datasets, which never "
            "left their machines, and a coordinator averaged their updates (weighted by sample count) over "
            f"{completed} round(s). Strategy: {how}; {mu_text}."
        )
    out.append("")
    summary = [
        (
            "Base model",
            "a tiny SmolVLA built from scratch (zk0 demo)" if base_model == "tiny" else base_model,
        ),
        ("Strategy", f"{strategy}, {mu_text}"),
        ("Rounds", f"{completed}" + (f" of {configured_rounds} configured" if configured_rounds else "")),
        ("Datasets" if centralized else "Participants", ", ".join(names) if names else "–"),
        ("Local steps per round", _fmt(train.get("local_steps"))),
        (
            "Learning rate",
            _fmt(train.get("lr"))
            + (
                f" (server lr per round: {_fmt(min(lrs))} to {_fmt(max(lrs))})"
                if lrs and min(lrs) != max(lrs)
                else ""
            ),
        ),
        ("Final model", f"round {final_round}, version `{final_version}`"),
    ]
    if best_record:
        summary.append(("Best model", f"round {best_record.round}, version `{best_record.version}`"))
    out.append(_table(["", ""], summary))
    out.append("")

    out.append("## Results")
    out.append("")
    out.append(
        "Loss is SmolVLA's flow-matching training loss and action MAE the mean absolute error of the "
        "predicted action chunk, both on held-out evaluation data; composite is the sample-weighted mean "
        "over the evaluation datasets. Lower is better."
    )
    out.append("")
    rows = []
    if base_entry is not None and base_entry.eval is not None:
        c = _eval_at(base_entry).composite
        rows.append(("Base model (round 0)", 0, c.get("loss"), c.get("action_mae")))
    if final_eval_round is not None:
        c = _eval_at(kept[final_eval_round]).composite
        label = "Final" if final_eval_round == final_round else "Final (last evaluated round)"
        rows.append((label, final_eval_round, c.get("loss"), c.get("action_mae")))
    if best_record and best_entry is not None and best_entry.eval is not None:
        c = _eval_at(best_entry).composite
        rows.append(("Best", best_record.round, c.get("loss"), c.get("action_mae")))
    out.append(
        _table(["Model", "Round", "Composite loss", "Composite action MAE"], rows)
        if rows
        else "No evaluation was recorded."
    )
    out.append("")

    columns = [("round 0", base_entry)]
    if final_eval_round is not None:
        columns.append((f"final (round {final_eval_round})", kept[final_eval_round]))
    if best_record and best_entry is not None and best_entry.eval is not None:
        columns.append((f"best (round {best_record.round})", best_entry))
    dataset_names = sorted({n for _, e in columns for n in _eval_at(e).datasets})
    if dataset_names:
        out.append("### Per evaluation dataset")
        out.append("")
        header = ["Dataset"] + [f"loss, {c}" for c, _ in columns] + [f"action MAE, {c}" for c, _ in columns]
        table_rows = []
        for name in dataset_names:
            per = [_eval_at(e).datasets.get(name, {}) for _, e in columns]
            table_rows.append([name] + [m.get("loss") for m in per] + [m.get("action_mae") for m in per])
        composite = [_eval_at(e).composite for _, e in columns]
        table_rows.append(
            ["composite"] + [m.get("loss") for m in composite] + [m.get("action_mae") for m in composite]
        )
        out.append(_table(header, table_rows))
        out.append("")

    out.append("## Data")
    out.append("")
    out.append(
        "Training data (the union of these datasets, in one place):"
        if centralized
        else "Training data (each participant's own dataset, used on its machine only):"
    )
    out.append("")
    rows = []
    for name in names:
        d = participants.get(name, {})
        rows.append(
            (
                name,
                _published_dataset(d.get("repo_id")),
                d.get("episodes"),
                d.get("frames"),
                d.get("fps"),
                _features(d.get("features")) or "–",
                contributed[name],
            )
        )
    out.append(
        _table(
            ["Participant", "Dataset", "Episodes", "Frames", "FPS", "Features", "Rounds contributed"], rows
        )
    )
    out.append("")
    private = sum(
        _published_dataset(participants.get(n, {}).get("repo_id")) == PRIVATE_DATASET for n in names
    )
    if private:
        out.append(
            f"{private} of {len(names)} participant(s) trained on local datasets that are not on the hub; "
            "their names and paths are not published."
        )
        out.append("")
    out.append("Evaluation data (held out, evaluated by the coordinator):")
    out.append("")
    rows = [
        (name, d.get("repo_id", "–"), d.get("episodes"), d.get("frames"))
        for name, d in sorted(eval_datasets.items())
    ]
    out.append(_table(["Name", "Dataset", "Episodes", "Frames"], rows))
    out.append("")

    out.append("## Rounds")
    out.append("")
    rows = []
    for r, e in kept.items():
        if r == 0:
            continue
        p, hp = e.participants, e.hyperparameters
        rows.append(
            (
                r,
                e.attempt or 1,
                ", ".join(p.accepted if p else []) or "–",
                ", ".join(p.dropped if p else []) or "–",
                hp.mu if hp else None,
                hp.lr if hp else None,
                _eval_at(e).composite.get("loss"),
            )
        )
    out.append(
        _table(["Round", "Attempt", "Accepted", "Dropped", "mu", "lr", "Composite loss"], rows)
        if rows
        else "No training round was completed."
    )
    out.append("")

    out.append("## How to load")
    out.append("")
    out.append(
        "This folder is a lerobot `pretrained_model/` directory (config.json, model.safetensors and the "
        "pre/post-processor files). Load it with lerobot's API:"
    )
    out.append("")
    out.append("```python")
    out.append("from lerobot.policies.factory import make_pre_post_processors")
    out.append("from lerobot.policies.smolvla import SmolVLAPolicy")
    out.append("")
    out.append('path = "path/to/this/folder"  # from the hub: huggingface_hub.snapshot_download(REPO_ID)')
    out.append("policy = SmolVLAPolicy.from_pretrained(path)")
    out.append("preprocessor, postprocessor = make_pre_post_processors(policy.config, pretrained_path=path)")
    out.append("```")
    out.append("")
    vlm_note = (
        "This export has one: it is the tiny demo model. "
        if base_model == "tiny"
        else "(Exports of the tiny demo model have one.) "
    )
    out.append(
        "When the folder holds a `vlm/` directory (the VLM config and tokenizer), config.json and the "
        f"preprocessor refer to it by the relative path `vlm`. {vlm_note}Then either run the code above from "
        'inside the folder (`path = "."`), or load it from anywhere with zk0, which resolves `vlm/` against '
        "the folder for lerobot:"
    )
    out.append("")
    out.append("```python")
    out.append("from zk0.policy import load_exported")
    out.append("")
    out.append('bundle = load_exported("path/to/this/folder")  # .policy, .preprocessor, .postprocessor')
    out.append("```")
    out.append("")

    out.append("## Training configuration")
    out.append("")
    out.append("```toml")
    out.append(config_toml.rstrip("\n"))
    out.append("```")
    out.append("")
    return "\n".join(out)
