"""One rule for reusing a run directory, checked by every command before any work.

- no run there (absent, or empty): start one;
- the same command's run with the same config: resume it; a finished one is reported in one line;
- another config: refuse, naming the differing keys; another command's run: refuse;
- --overwrite: delete the run there and start afresh;
- federated runs compare configs without federation.rounds: raising it extends a finished run (the config
  snapshot takes the new value); lowering it below the rounds already completed is refused.

What resuming means depends on the command: a federated run goes on after its last completed round; a
centralized run keeps no mid-run checkpoint, so an incomplete one restarts from scratch; a comparison resumes
run by run, each of its runs following this same rule.
"""

from __future__ import annotations

import json
import shutil
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zk0.atomic_files import write_atomic
from zk0.config import Config, config_to_toml
from zk0.errors import Zk0Error
from zk0.rundir import CONFIG_FILE, FINAL_DIR, METRICS_FILE, RunDir

STATE_FILE = "state.json"  # the federated run's last completed round (coordinator/store.py writes it)
KINDS = ("federated", "centralized", "compare")
EXTENDABLE = ("federation.rounds",)  # keys a federated run may change on resume


@dataclass(frozen=True)
class Reuse:
    """What a command does with its run directory: "fresh", "resume" or "finished" (then `message` says
    where the results are, and the command stops there with exit status 0)."""

    action: str
    message: str = ""


def flat(table: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A parsed TOML document as {"section.key": value}."""
    out: dict[str, Any] = {}
    for key, value in table.items():
        if isinstance(value, dict):
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def config_differences(stored_toml: str, wanted_toml: str, *, ignore: tuple[str, ...] = ()) -> list[str]:
    """The dotted keys whose values differ between two config snapshots (either side missing counts)."""
    stored, wanted = flat(tomllib.loads(stored_toml)), flat(tomllib.loads(wanted_toml))
    return sorted(
        k for k in stored.keys() | wanted.keys() if k not in ignore and stored.get(k) != wanted.get(k)
    )


def completed_round(path: Path) -> int:
    """The last round a federated run directory marked completed; -1 before round 0 is."""
    state = Path(path) / STATE_FILE
    return int(json.loads(state.read_text())["completed_round"]) if state.exists() else -1


def run_kind(path: Path) -> str:
    """The command whose run a directory holds, from run.json, or from its files when it predates run.json."""
    info = RunDir(path).info()
    if "kind" in info:
        return info["kind"]
    if (path / STATE_FILE).exists() or (path / "models").exists():
        return "federated"
    return "centralized" if (path / METRICS_FILE).exists() else "compare"


def reuse_run_dir(path: Path, config: Config, kind: str, *, overwrite: bool = False) -> Reuse:
    """Apply the rule (module docstring) to `path` for a `kind` command with `config`: returns what to do,
    or raises Zk0Error saying why not. Its only writes: the deletion of the run for --overwrite or of an
    incomplete centralized one, a federated run's config snapshot when federation.rounds changes, and
    run.json's `finished` cleared when a run goes on."""
    assert kind in KINDS, kind
    path = Path(path)
    holds_run = (path / CONFIG_FILE).exists()
    if path.exists() and not path.is_dir():
        raise Zk0Error(f"{path} is a file, not a run directory")
    if overwrite and holds_run:
        shutil.rmtree(path)
        return Reuse("fresh")
    if not holds_run:
        if path.exists() and any(path.iterdir()):
            raise Zk0Error(f"{path} is not empty and holds no zk0 run; choose another directory")
        return Reuse("fresh")
    found = run_kind(path)
    if found != kind:
        raise Zk0Error(
            f"{path} holds a {found} run, not a {kind} one; choose another directory, "
            "or pass --overwrite to delete it and start afresh"
        )
    stored, wanted = (path / CONFIG_FILE).read_text(), config_to_toml(config)
    differing = config_differences(stored, wanted, ignore=EXTENDABLE if kind == "federated" else ())
    if differing:
        raise Zk0Error(
            f"{path} holds a run with another config (differing: {', '.join(differing)}); rerun with its "
            "config, choose another directory, or pass --overwrite to delete it and start afresh"
        )
    run = RunDir(path)
    finished = bool(run.info().get("finished"))
    results = f"results in {path / FINAL_DIR} and {path / METRICS_FILE}"
    if kind == "federated":
        done, rounds = completed_round(path), config.federation.rounds
        if done > rounds:
            raise Zk0Error(
                f"{path} already completed {done} rounds, more than federation.rounds={rounds}; "
                "raise federation.rounds, or pass --overwrite to delete it and start afresh"
            )
        if finished and done == rounds:
            return Reuse("finished", f"{path} holds this run, finished after {rounds} rounds: {results}")
        if stored != wanted:  # federation.rounds only: the snapshot takes the new count
            write_atomic(path / CONFIG_FILE, wanted.encode())
    elif kind == "centralized":
        if finished:
            return Reuse("finished", f"{path} holds this centralized run, finished: {results}")
        shutil.rmtree(path)  # no mid-run checkpoint: an incomplete run restarts from scratch
        return Reuse("fresh", f"{path} held an incomplete centralized run: restarting it from scratch")
    elif finished:
        return Reuse("finished", f"{path} holds this comparison, finished: results in {path / 'compare.md'}")
    if finished:
        run.write_info(finished=False)
    return Reuse("resume")
