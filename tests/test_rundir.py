"""The one rule for reusing a run directory (zk0.reuse), on real directories written the way the commands
write them, and metrics.jsonl's recovery from a torn last line."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import small_overrides

from zk0.config import config_to_toml, load_config
from zk0.errors import Zk0Error
from zk0.records import RoundEntry
from zk0.reuse import config_differences, reuse_run_dir
from zk0.rundir import CONFIG_FILE, RunDir

CONFIGS = Path(__file__).parent.parent / "configs"


def config(*overrides: str):
    return load_config(CONFIGS / "demo.toml", ["federation.rounds=2", *overrides])


def federated_run(path: Path, cfg, *, completed: int, finished: bool) -> RunDir:
    """A federated run directory as the coordinator leaves it: snapshot, run.json, state.json."""
    run = RunDir.create(path, cfg, kind="federated")
    (path / "state.json").write_text(json.dumps({"completed_round": completed, "version": "v", "size": 1}))
    if finished:
        run.mark_finished()
    return run


def test_config_differences_name_the_keys_only():
    a, b = config(), config("train.lr=0.005", "federation.rounds=9")
    assert config_differences(config_to_toml(a), config_to_toml(b)) == ["federation.rounds", "train.lr"]
    assert config_differences(config_to_toml(a), config_to_toml(b), ignore=("federation.rounds",)) == [
        "train.lr"
    ]


def test_fresh_when_absent_or_empty_and_refused_when_not_a_run(tmp_path):
    assert reuse_run_dir(tmp_path / "new", config(), "federated").action == "fresh"
    (tmp_path / "empty").mkdir()
    assert reuse_run_dir(tmp_path / "empty", config(), "centralized").action == "fresh"
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    for overwrite in (False, True):  # --overwrite never deletes what is not a run
        with pytest.raises(Zk0Error, match="holds no zk0 run"):
            reuse_run_dir(tmp_path / "other", config(), "federated", overwrite=overwrite)
    assert (tmp_path / "other" / "notes.txt").exists()


def test_same_config_resumes_and_a_finished_run_is_reported(tmp_path):
    path = tmp_path / "run"
    federated_run(path, config(), completed=1, finished=False)
    assert reuse_run_dir(path, config(), "federated").action == "resume"
    federated_run(tmp_path / "done", config(), completed=2, finished=True)
    reuse = reuse_run_dir(tmp_path / "done", config(), "federated")
    assert reuse.action == "finished"
    assert "finished after 2 rounds" in reuse.message and str(tmp_path / "done" / "final") in reuse.message


def test_another_config_is_refused_naming_the_keys(tmp_path):
    path = tmp_path / "run"
    federated_run(path, config(), completed=1, finished=False)
    with pytest.raises(Zk0Error) as refused:
        reuse_run_dir(path, config("train.lr=0.005", "seed=7"), "federated")
    message = str(refused.value)
    assert "differing: seed, train.lr" in message and "--overwrite" in message
    assert "\n" not in message and "+" not in message  # keys, not a diff dump
    with pytest.raises(Zk0Error, match="holds a federated run, not a centralized one"):
        reuse_run_dir(path, config(), "centralized")


def test_raising_rounds_extends_a_finished_federated_run_and_lowering_below_done_is_refused(tmp_path):
    path = tmp_path / "run"
    federated_run(path, config(), completed=2, finished=True)
    assert reuse_run_dir(path, config("federation.rounds=4"), "federated").action == "resume"
    assert "rounds = 4" in (path / CONFIG_FILE).read_text()  # the snapshot takes the new count
    assert RunDir(path).info() == {"kind": "federated", "finished": False}
    with pytest.raises(Zk0Error, match="completed 2 rounds, more than federation.rounds=1"):
        reuse_run_dir(path, config("federation.rounds=1"), "federated")


def test_overwrite_deletes_the_run_and_starts_afresh(tmp_path):
    path = tmp_path / "run"
    federated_run(path, config(), completed=2, finished=True)
    assert reuse_run_dir(path, config("train.lr=0.005"), "federated", overwrite=True).action == "fresh"
    assert not path.exists()


def test_an_incomplete_centralized_run_restarts_and_a_finished_one_is_reported(tmp_path):
    path = tmp_path / "central"
    run = RunDir.create(path, config(), kind="centralized")
    run.metrics_path.write_text('{"round": 0}\n')
    reuse = reuse_run_dir(path, config(), "centralized")
    assert reuse.action == "fresh" and "from scratch" in reuse.message and not path.exists()
    run = RunDir.create(path, config(), kind="centralized")
    run.mark_finished()
    assert reuse_run_dir(path, config(), "centralized").action == "finished"


@pytest.mark.slow
def test_the_commands_apply_the_rule_before_any_work(tmp_path):
    """zk0 centralized into a federated run's directory refuses at once, with one line and exit 2."""
    path = tmp_path / "run"
    federated_run(path, config(), completed=1, finished=False)
    for command in (["centralized", "--run-dir"], ["simulate", "--set", "train.lr=0.005", "--run-dir"]):
        result = subprocess.run(
            [sys.executable, "-m", "zk0.cli", *command, str(path), "--set", "federation.rounds=2"],
            capture_output=True,
            text=True,
            timeout=600,
            cwd=CONFIGS.parent,
        )
        assert result.returncode == 2, result.stderr
        (line,) = result.stderr.strip().splitlines()
        assert line.startswith("zk0: error: ") and str(path) in line


def test_recover_metrics_drops_a_torn_last_line_and_refuses_a_damaged_middle(tmp_path):
    run = RunDir(tmp_path)
    whole = [{"round": 0, "version": "a"}, {"round": 1, "version": "b"}]
    run.metrics_path.write_text("".join(json.dumps(e) + "\n" for e in whole) + '{"round": 2, "ver')
    assert run.recover_metrics() == []
    assert [e.to_json() for e in run.read_records()] == whole
    assert run.recover_metrics(keep=lambda e: e.round < 1) == [RoundEntry.from_json(whole[1])]
    assert [e.to_json() for e in run.read_records()] == whole[:1]
    run.metrics_path.write_text('{"round": 0}\n{"rou\n{"round": 2}\n')
    with pytest.raises(Zk0Error, match="line 2 is damaged"):
        run.recover_metrics()


@pytest.mark.slow
def test_simulate_reports_a_finished_run_and_extends_it_when_rounds_rise(demo_root, tmp_path):
    run = tmp_path / "run"
    small = small_overrides(
        demo_root,
        'data.participants=["demo:p0", "demo:p1"]',
        "federation.min_participants=2",
        "federation.min_updates=2",
    )

    def simulate(rounds: int) -> subprocess.CompletedProcess:
        sets = [a for o in [*small, f"federation.rounds={rounds}"] for a in ("--set", o)]
        command = [sys.executable, "-m", "zk0.cli", "simulate", "--run-dir", str(run), "--no-progress", *sets]
        return subprocess.run(command, capture_output=True, text=True, timeout=900, cwd=CONFIGS.parent)

    first = simulate(1)
    assert first.returncode == 0, first.stderr[-3000:]
    before = RunDir(run).read_records()
    again = simulate(1)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"zk0: {run} holds this run, finished after 1 rounds" in again.stdout
    assert RunDir(run).read_records() == before  # nothing redone, nothing recorded
    more = simulate(2)
    assert more.returncode == 0, more.stderr[-3000:]
    assert [e.round for e in RunDir(run).read_records() if e.aggregated] == [0, 1, 2]
    assert "rounds = 2" in (run / CONFIG_FILE).read_text()
    assert RunDir(run).info()["finished"] is True


def test_recover_drops_records_of_rounds_not_completed_and_rederives_the_best(tmp_path):
    """A coordinator killed after recording round 2 (and keeping it as best) but before marking it
    completed: on reopening, round 2's record goes, the best is round 1 again, leftovers are removed."""
    from coordinator.store import RunStore
    from zk0.payload import sha256_hex

    path, cfg = tmp_path / "run", config("federation.rounds=3")
    store, resumed = RunStore.open(path, cfg)
    assert not resumed
    models = {r: f"model {r}".encode() for r in range(3)}
    losses = {0: 2.0, 1: 1.5, 2: 1.0}
    for r, data in models.items():
        store.model_path(r).parent.mkdir(exist_ok=True)
        store.model_path(r).write_bytes(data)
        entry = {"round": r, "version": sha256_hex(data), "eval": {"composite": {"loss": losses[r]}}}
        store.run.record(RoundEntry.from_json(entry), step=r)
        if r < 2:
            store.mark_completed(r, sha256_hex(data), len(data))
        store.save_best(r, sha256_hex(data), losses[r])  # each round beat the one before
    store.run.close()
    spool = store.round_dir(3) / ".p0.safetensors.abc.part"
    spool.parent.mkdir(parents=True)
    spool.write_bytes(b"half")

    store, resumed = RunStore.open(path, cfg)
    store.run.close()
    assert resumed
    assert [e.round for e in store.run.read_records()] == [0, 1]
    record, data = store.best()
    assert record == {"round": 1, "version": sha256_hex(models[1]), "loss": 1.5} and data == models[1]
    assert not spool.exists()


@pytest.mark.slow
def test_serve_on_a_finished_run_says_so_in_one_line_and_exits_0(tmp_path):
    path, cfg = tmp_path / "run", config()
    federated_run(path, cfg, completed=2, finished=True)
    config_path = tmp_path / "config.toml"
    config_path.write_text(config_to_toml(cfg))
    command = [sys.executable, "-m", "coordinator.cli", "serve", "--config", str(config_path)]
    result = subprocess.run(
        [*command, "--run-dir", str(path), "--insecure", "--port", "0"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=CONFIGS.parent,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    results = f"results in {path / 'final'} and {path / 'metrics.jsonl'}"
    assert result.stdout == f"zk0-coordinator: {path} holds this run, finished after 2 rounds: {results}\n"
