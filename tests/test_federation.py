"""Federation end to end over real gRPC on loopback; real processes where the point is a crash."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from conftest import set_args, small_config, small_overrides

from coordinator.server import CoordinatorServer, ServerOptions
from participant.client import ClientOptions, ParticipantClient
from zk0.config import config_to_toml
from zk0.payload import sha256_hex
from zk0.simulate import simulate
from zk0.tensors import decode_state

ROOT = Path(__file__).parent.parent
BIN = Path(sys.executable).parent


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
@pytest.mark.parametrize("server_lr", [1.0, 2.0])
def test_simulated_round_is_the_sample_weighted_mean_of_its_spooled_updates(demo_root, tmp_path, server_lr):
    """server_lr 1 (plain FedAvg): the round-2 model is the mean; else previous + lr * (mean - previous)."""
    config = small_config(demo_root, "federation.rounds=2", f"federation.server_lr={server_lr}")
    run = tmp_path / "run"
    history = simulate(config, run, device="cpu", progress=False)

    assert [e.round for e in history] == [0, 1, 2]
    entry = history[2]
    assert entry.participants.accepted == ["p0", "p1", "p2"]
    round_dir = run / "updates" / "round-0002"
    counts = {}
    for line in (round_dir / "accepted.jsonl").read_text().splitlines():
        header = json.loads(line)
        counts[header["participant_id"]] = header["sample_count"]
    assert sorted(counts) == ["p0", "p1", "p2"]
    updates = {name: decode_state((round_dir / f"{name}.safetensors").read_bytes()) for name in counts}
    global_bytes = (run / "models" / "round-0002.safetensors").read_bytes()
    assert sha256_hex(global_bytes) == entry.version
    global_state = decode_state(global_bytes)
    previous = decode_state((run / "models" / "round-0001.safetensors").read_bytes())
    total = float(sum(counts.values()))
    for tensor_name, value in global_state.items():
        acc = torch.zeros(value.shape, dtype=torch.float32)
        for name in sorted(updates):
            acc.add_(updates[name][tensor_name].float(), alpha=float(counts[name]))
        mean = (acc / total).to(value.dtype)
        if server_lr == 1.0:
            assert torch.equal(value, mean), tensor_name
        else:
            old = previous[tensor_name].float()
            expected = (old + server_lr * (mean.float() - old)).to(value.dtype)
            torch.testing.assert_close(value, expected, rtol=0, atol=0, msg=tensor_name)
    # the participants trained from the round-1 model and reported their held-out loss on it
    assert entry.base_version == history[1].version
    assert set(entry.participant_eval) == {"p0", "p1", "p2"}
    # the reports: exports of the last and best models, a model card, charts, who took part
    assert (run / "final" / "model.safetensors").exists()
    best = json.loads((run / "best.json").read_text())
    losses = {e.round: e.eval.loss for e in history}
    assert best["loss"] == min(losses.values()) and best["round"] == min(losses, key=losses.get)
    assert (run / "best" / "model.safetensors").exists()
    card = (run / "final" / "README.md").read_text()
    assert "library_name: lerobot" in card
    assert "zk0-demo/p1" in card
    for chart in ("eval_loss.png", "hyperparameters.png"):
        assert (run / chart).stat().st_size > 1000
    assert set(json.loads((run / "participants.json").read_text())) == {"p0", "p1", "p2"}


def start_participant_process(port: int, spec: str, demo_root: Path, log_path: Path) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [str(BIN / "zk0-participant"), "--coordinator", f"127.0.0.1:{port}", "--dataset", spec]
        + ["--insecure", "--device", "cpu", "--no-progress", "--give-up-after", "300"],
        env=env,
        stdout=log_path.open("w"),
        stderr=subprocess.STDOUT,
    )


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def client_thread(
    port: int, spec: str, lock: threading.Lock, errors: list, give_up_s: float = 90
) -> threading.Thread:
    """A participant in a thread; what it raises lands in `errors`. A longer `give_up_s` rides out a
    coordinator process that takes a while to (re)start on a loaded machine."""
    options = ClientOptions(
        coordinator=f"127.0.0.1:{port}",
        dataset=spec,
        name=spec.removeprefix("demo:"),
        insecure=True,
        device="cpu",
        progress=False,
        give_up_s=give_up_s,
    )

    def run() -> None:
        try:
            ParticipantClient(options, train_lock=lock).run()
        except Exception as e:  # noqa: BLE001 - surfaced by the test's assertion on `errors`
            errors.append(e)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


@pytest.mark.slow
def test_killed_participant_is_dropped_and_the_round_completes_before_its_deadline(
    demo_root, tmp_path, caplog
):
    config = small_config(
        demo_root,
        "federation.min_updates=2",
        "train.local_steps=40",
        "federation.round_timeout_s=300",  # far off: the round must end at the victim's lapsed lease
    )
    server = CoordinatorServer(config, tmp_path / "run", ServerOptions(insecure=True, device="cpu"))
    port = server.start()
    victim_log = tmp_path / "victim.log"
    victim = start_participant_process(port, "demo:p2", demo_root, victim_log)
    lock, errors = threading.Lock(), []
    threads = [client_thread(port, spec, lock, errors) for spec in ("demo:p0", "demo:p1")]
    try:
        wait_for(lambda: "p2: round 1," in victim_log.read_text(), 180, "the victim to start training")
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        server.wait(timeout=120)
    finally:
        victim.kill()
        server.stop_event.set()
    for thread in threads:
        thread.join(timeout=30)
    assert not errors
    (entry,) = [e for e in metrics(tmp_path / "run") if e["round"] == 1]
    assert entry["participants"]["accepted"] == ["p0", "p1"]
    assert entry["participants"]["dropped"] == ["p2"]
    # dropped when its lease lapsed, not at the round's deadline
    assert "participant p2: lease lapsed, dropped" in caplog.text
    assert "deadline passed" not in caplog.text
    assert "version" in entry


@pytest.mark.slow
def test_killed_coordinator_resumes_from_the_saved_model_and_finishes(demo_root, tmp_path):
    config = small_config(
        demo_root,
        "federation.rounds=3",
        "federation.min_participants=2",
        "federation.min_updates=2",
        'data.participants=["demo:p0", "demo:p1"]',
    )
    config_path = tmp_path / "config.toml"
    config_path.write_text(config_to_toml(config))
    run = tmp_path / "run"
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    command = [str(BIN / "zk0-coordinator"), "serve", "--config", str(config_path), "--run-dir", str(run)]
    command += ["--port", str(port), "--insecure", "--device", "cpu"]

    first_log = tmp_path / "first.log"
    first = subprocess.Popen(command, env=env, stdout=first_log.open("w"), stderr=subprocess.STDOUT)
    # Participants as processes: each must also exit cleanly (it once died of SIGABRT at exit after this).
    logs = {spec: tmp_path / f"{spec.removeprefix('demo:')}.log" for spec in ("demo:p0", "demo:p1")}
    participants = {spec: start_participant_process(port, spec, demo_root, log) for spec, log in logs.items()}
    state_file = run / "state.json"
    try:
        wait_for(
            lambda: state_file.exists() and json.loads(state_file.read_text())["completed_round"] >= 1,
            240,
            "round 1 to complete",
        )
        first.send_signal(signal.SIGKILL)
        first.wait()
        saved = json.loads(state_file.read_text())
        saved_bytes = (run / "models" / f"round-{saved['completed_round']:04d}.safetensors").read_bytes()
        assert sha256_hex(saved_bytes) == saved["version"]

        second_log = tmp_path / "second.log"
        second = subprocess.run(
            command, env=env, stdout=second_log.open("w"), stderr=subprocess.STDOUT, timeout=400
        )
        exits = {spec: process.wait(timeout=120) for spec, process in participants.items()}
    finally:
        first.kill()
        for process in participants.values():
            process.kill()
    assert second.returncode == 0, second_log.read_text()[-3000:]
    for spec, code in exits.items():
        assert code == 0, f"{spec} exited {code}:\n{logs[spec].read_text()[-3000:]}"
    log = second_log.read_text()
    assert f"after round {saved['completed_round']} (global model {saved['version'][:12]})" in log
    entries = metrics(run)
    resumed = [e for e in entries if e["round"] == saved["completed_round"] + 1]
    assert resumed and resumed[-1]["base_version"] == saved["version"]
    assert max(e["round"] for e in entries) == 3
    assert json.loads(state_file.read_text())["completed_round"] == 3
    assert (run / "final" / "model.safetensors").exists()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("flag", ["--help"])
def test_console_scripts_exist(flag):
    for script in ("zk0-coordinator", "zk0-participant"):
        assert subprocess.run([str(BIN / script), flag], capture_output=True).returncode == 0


@pytest.mark.slow
def test_adaptive_rules_change_what_participants_receive(demo_root, tmp_path):
    config = small_config(
        demo_root,
        "federation.rounds=2",
        "adaptive.mu_dynamic=true",
        "adaptive.mu_spread_threshold=1e-9",  # any spread at all raises mu
        "adaptive.mu_factor=3.0",
        "adaptive.lr_boost=true",
        "adaptive.boost_k=1.0",  # anyone above the mean loss is boosted
        "adaptive.boost_factor=2.0",
        "adaptive.lr_max=0.01",
    )
    history = simulate(config, tmp_path / "run", device="cpu", progress=False)
    first, second = history[1], history[2]
    base_mu, base_lr = config.federation.mu, config.train.lr
    for update in first.updates.values():
        assert update.metrics["mu"] == base_mu and update.metrics["lr"] == base_lr
    assert first.adaptive.mu == pytest.approx(3 * base_mu)
    assert any("dynamic mu" in rule for rule in first.adaptive.rules)
    boosted = first.adaptive.lr_per_participant
    losses = {n: u.policy_loss for n, u in first.updates.items()}
    mean = sum(losses.values()) / len(losses)
    assert boosted and set(boosted) == {n for n, loss in losses.items() if loss > mean}
    for name, update in second.updates.items():
        assert update.metrics["mu"] == pytest.approx(3 * base_mu)
        expected_lr = 2 * base_lr if name in boosted else base_lr
        assert update.metrics["lr"] == pytest.approx(expected_lr)
        assert update.metrics["lr_first"] == pytest.approx(expected_lr)  # the optimizer really started there
    assert second.hyperparameters.mu == pytest.approx(3 * base_mu)


@pytest.mark.slow
def test_push_to_hub_offline_fails_before_training(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    run = tmp_path / "run"
    result = subprocess.run(
        [str(BIN / "zk0"), "simulate", "--run-dir", str(run), "--push-to-hub", "someone/zk0-model"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("zk0: error:") and "hub" in lines[0], result.stderr
    assert not run.exists()


@pytest.mark.slow
def test_compare_writes_the_table_of_every_model(demo_root, tmp_path):
    out = tmp_path / "cmp"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    args = [str(BIN / "zk0"), "compare", "--out", str(out), "--no-progress", "--device", "cpu"]
    args += set_args(
        small_overrides(
            demo_root,
            "train.batch_size=8",
            "eval.action_error=false",
            'train.device="mps"',  # absent here: every run must train on --device, the local ones included
        )
    )
    result = subprocess.run(args, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    table = (out / "compare.md").read_text()
    for row in (
        "initial model",
        "federated fedavg",
        "federated fedprox",
        "centralized",
        "p0 alone",
        "p2 alone",
    ):
        assert f"| {row} |" in table
    data = json.loads((out / "compare.json").read_text())
    kinds = [r["kind"] for r in data["rows"]]
    assert kinds.count("federated") == 2 and kinds.count("local") == 3
    samples = {r["name"]: r["samples"] for r in data["rows"]}
    assert samples["federated fedavg"] == samples["centralized"] == 3 * samples["p0 alone"]
    assert len(data["checks"]) == 6
    assert table in result.stdout


def test_spike_guard_rollback_serves_the_best_model(demo_root, tmp_path):
    from coordinator.adaptive import Decision
    from zk0.tensors import encode_state

    config = small_config(demo_root, "adaptive.spike_guard=true", "adaptive.spike_rollback=true")
    server = CoordinatorServer(config, tmp_path / "run", ServerOptions(insecure=True, device="cpu"))
    best_version = server.coordinator.global_version  # round 0 is the only, hence best, model
    worse = {name: value + 1.0 for name, value in server.coordinator.global_state().items()}
    data = encode_state(worse)
    server.coordinator.set_global(1, data, server.store.save_global(1, data))
    assert server.coordinator.global_version != best_version
    server._apply(Decision(mu=0.01, lr=1e-3, rules=["spike"], hold=True, rollback=True), 1)
    assert server.coordinator.global_version == best_version
    assert sha256_hex(server.coordinator.global_bytes) == best_version


@pytest.mark.slow
def test_a_fedadam_run_extended_after_it_finished_takes_the_same_steps_as_one_run(demo_root, tmp_path):
    """FedAdam's moments are saved with each round's model: a run of 2 rounds raised to 3 (a fresh
    coordinator, as after a restart) ends on the very bytes of one 3-round run."""
    overrides = [
        "federation.strategy=fedadam",
        "federation.server_lr=1.0",
        "federation.min_participants=2",
        "federation.min_updates=2",
        'data.participants=["demo:p0", "demo:p1"]',
        "train.local_steps=2",
        "eval.batches=1",
    ]
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    simulate(small_config(demo_root, *overrides, "federation.rounds=3"), whole, device="cpu", progress=False)
    simulate(small_config(demo_root, *overrides, "federation.rounds=2"), parts, device="cpu", progress=False)
    simulate(small_config(demo_root, *overrides, "federation.rounds=3"), parts, device="cpu", progress=False)
    assert (parts / "models" / "round-0002.strategy.safetensors").exists()
    steps = [e["aggregation"]["server_step"] for e in metrics(parts) if "aggregation" in e]
    assert steps == [1, 2, 3]
    last = "models/round-0003.safetensors"
    assert (parts / last).read_bytes() == (whole / last).read_bytes()
