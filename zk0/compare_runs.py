"""`zk0 compare`: trains every model of the learning-quality comparison (federated, one run per strategy,
centralized, each participant alone) under one output directory, each run resumable, and scores them all
with zk0.compare."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from zk0.centralized import run_centralized
from zk0.compare import Row, score, table, trainable_from, verdict
from zk0.config import load_config
from zk0.data import dataset_name
from zk0.evaluation import evaluation_setup
from zk0.policy import resolve_device, trainable_state
from zk0.records import latest_rounds
from zk0.reuse import reuse_run_dir
from zk0.rundir import CONFIG_FILE, RunDir
from zk0.simulate import simulate


def run_compare(
    config_path: Path | None,
    overrides: list[str],
    out: Path,
    *,
    device: str | None = None,
    progress: bool = True,
    strategies: Sequence[str] = ("fedavg", "fedprox"),
) -> str:
    """Train (or, resuming, reuse) every run under `out`, write compare.md and compare.json, mark `out`
    finished; returns the report. Each variant is the config file with `overrides` and its own ones on top.
    `device` overrides train.device. One federated run per strategy; fedadam/fedyogi run with
    federation.server_lr = 1 (they step with strategy.eta, and the config refuses a server_lr they ignore)."""
    config = load_config(config_path, overrides)
    if not (out / CONFIG_FILE).exists():
        RunDir.create(out, config, kind="compare")
    device = resolve_device(device or config.train.device)
    fed, steps = config.federation, config.train.local_steps * config.train.batch_size  # samples/round
    participants = len(config.data.participants)

    def variant(*more: str):
        return load_config(config_path, [*overrides, *more])

    bundle, eval_sets = evaluation_setup(config, device=device)
    rows = [
        score(
            Row("initial model", "initial", 0), trainable_state(bundle.policy), bundle, eval_sets, config.eval
        )
    ]
    for strategy in strategies:
        optimizer = ["federation.server_lr=1.0"] if strategy in ("fedadam", "fedyogi") else []
        run, run_config = out / strategy, variant(f'federation.strategy="{strategy}"', *optimizer)
        if reuse_run_dir(run, run_config, "federated").action == "finished":  # a resumed comparison
            history = RunDir(run).read_records()
        else:
            history = simulate(run_config, run, device=device, progress=progress)
        last = max(latest_rounds(history))
        state = trainable_from(run / "models" / f"round-{last:04d}.safetensors", bundle.policy)
        row = Row(f"federated {strategy}", "federated", participants * fed.rounds * steps)
        rows.append(score(row, state, bundle, eval_sets, config.eval))
    if reuse_run_dir(out / "centralized", config, "centralized").action != "finished":
        run_centralized(config, out / "centralized", progress=progress, device=device)
    state = trainable_from(out / "centralized" / "final" / "model.safetensors", bundle.policy)
    row = Row("centralized", "centralized", participants * fed.rounds * steps)
    rows.append(score(row, state, bundle, eval_sets, config.eval))
    for spec in config.data.participants:
        name = dataset_name(spec)
        run, run_config = out / f"local-{name}", variant(f'data.participants=["{spec}"]')
        if reuse_run_dir(run, run_config, "centralized").action != "finished":
            run_centralized(run_config, run, progress=progress, device=device)
        state = trainable_from(run / "final" / "model.safetensors", bundle.policy)
        rows.append(
            score(Row(f"{name} alone", "local", fed.rounds * steps), state, bundle, eval_sets, config.eval)
        )

    checks = verdict(rows)
    report = (
        table(rows) + "\n\n" + "\n".join(f"- [{'x' if ok else ' '}] {text}" for ok, text in checks) + "\n"
    )
    (out / "compare.md").write_text(report)
    (out / "compare.json").write_text(
        json.dumps(
            {"rows": [vars(r) for r in rows], "checks": [{"held": ok, "check": t} for ok, t in checks]},
            indent=2,
        )
    )
    RunDir(out).mark_finished()
    return report
