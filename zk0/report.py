"""The model card of a run's final/ (a Hugging Face ModelCard README), computed from its metrics.jsonl records
only (no gRPC, no torch). In zk0/ because both the coordinator and `zk0 centralized` write it.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from zk0.charts import best_record, entry_of, number
from zk0.hub import DEMO_OWNER, is_hub_dataset_id, looks_like_hub_id
from zk0.records import Evaluation, RoundEntry, latest_rounds


def _fmt(value: Any) -> str:
    parsed = number(value)
    if parsed is None:
        return "–" if value is None else _cell(value)
    if float(parsed).is_integer() and isinstance(value, int):
        return str(int(parsed))
    return f"{parsed:.4g}"


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
CARD_TAGS = ("lerobot", "smolvla", "robotics", "federated-learning")


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
    configured_mu = number(federation.get("mu"))
    trained = [e.hyperparameters for r, e in kept.items() if r > 0 and e.hyperparameters is not None]
    mus = [v for hp in trained if (v := number(hp.mu)) is not None]
    lrs = [v for hp in trained if (v := number(hp.lr)) is not None]

    final_entry = next((e for e in reversed(kept.values()) if e.version == final_version), None)
    final_round = final_entry.round if final_entry else (max(kept) if kept else 0)
    final_eval_round = max((r for r in kept if r <= final_round and kept[r].eval is not None), default=None)
    best_kept = best_record(entries, kept, best)
    best_entry = entry_of(entries, kept, best_kept)
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
    if best_kept:
        summary.append(("Best model", f"round {best_kept.round}, version `{best_kept.version}`"))
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
    if best_kept and best_entry is not None and best_entry.eval is not None:
        c = _eval_at(best_entry).composite
        rows.append(("Best", best_kept.round, c.get("loss"), c.get("action_mae")))
    out.append(
        _table(["Model", "Round", "Composite loss", "Composite action MAE"], rows)
        if rows
        else "No evaluation was recorded."
    )
    out.append("")

    columns = [("round 0", base_entry)]
    if final_eval_round is not None:
        columns.append((f"final (round {final_eval_round})", kept[final_eval_round]))
    if best_kept and best_entry is not None and best_entry.eval is not None:
        columns.append((f"best (round {best_kept.round})", best_entry))
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
