"""SIGINT and SIGTERM as an operator sends them: real processes of every command, signalled mid-training.

Each must stop within a bounded wait, say `interrupted` in one line on stderr and exit 130.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import set_args, small_config, small_overrides

from coordinator.server import CoordinatorServer, ServerOptions
from zk0.config import config_to_toml

ROOT = Path(__file__).parent.parent
BIN = Path(sys.executable).parent
SIGNALS = [signal.SIGINT, signal.SIGTERM]
EXIT_WITHIN_S = 120  # generous: two CPU cores shared with other test runs


# The small run, with training that outlasts every test here (it is always interrupted).
ENDLESS = ("train.local_steps=100000", "federation.rounds=2", "federation.round_timeout_s=300")
ONE_PARTICIPANT = (
    'data.participants=["demo:p0"]',
    "federation.min_participants=1",
    "federation.min_updates=1",
)


def tiny(demo_root: Path) -> list[str]:
    """--set arguments for the endless small run."""
    return set_args(small_overrides(demo_root, *ENDLESS))


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)}


def start(command: list[str], tmp_path: Path) -> tuple[subprocess.Popen, Path, Path]:
    out, err = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    process = subprocess.Popen(
        command, cwd=tmp_path, env=env(), stdout=out.open("w"), stderr=err.open("w"), start_new_session=True
    )
    return process, out, err


def wait_for_text(path: Path, text: str, process: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while text not in path.read_text():
        if process.poll() is not None:
            raise AssertionError(f"exited {process.returncode} before {text!r}:\n{path.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"timed out waiting for {text!r}:\n{path.read_text()[-3000:]}")
        time.sleep(0.1)


def interrupt(process: subprocess.Popen, sig: signal.Signals, err: Path) -> str:
    """Signal the process, wait (bounded) for it to exit; assert exit 130 and one `interrupted` line."""
    process.send_signal(sig)
    try:
        code = process.wait(timeout=EXIT_WITHIN_S)
    except subprocess.TimeoutExpired:
        process.kill()
        message = f"still running {EXIT_WITHIN_S}s after {sig.name}:\n{err.read_text()[-3000:]}"
        raise AssertionError(message) from None
    stderr = err.read_text()
    assert code == 130, f"exit {code} after {sig.name}:\n{stderr[-3000:]}"
    assert stderr.rstrip().splitlines()[-1].endswith(": interrupted"), stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    return stderr


@pytest.mark.slow
@pytest.mark.parametrize("sig", SIGNALS, ids=lambda s: s.name)
def test_centralized_stops_on_a_signal_mid_training(demo_root, tmp_path, sig):
    command = [str(BIN / "zk0"), "centralized", "--config", str(ROOT / "configs" / "demo.toml")]
    command += ["--run-dir", str(tmp_path / "run"), *tiny(demo_root)]
    process, _out, err = start(command, tmp_path)
    wait_for_text(err, "round 0:", process)  # the initial evaluation is logged: round 1 is training
    time.sleep(3)  # into the fit, where Lightning used to turn the interrupt into exit 1
    interrupt(process, sig, err)
    assert (tmp_path / "run" / "metrics.jsonl").read_text().count("\n") == 1  # round 0, whole


@pytest.mark.slow
@pytest.mark.parametrize("sig", SIGNALS, ids=lambda s: s.name)
def test_simulate_stops_on_a_signal_mid_training(demo_root, tmp_path, sig):
    command = [str(BIN / "zk0"), "simulate", "--config", str(ROOT / "configs" / "demo.toml")]
    command += ["--run-dir", str(tmp_path / "run"), "--device", "cpu", *tiny(demo_root)]
    process, _out, err = start(command, tmp_path)
    wait_for_text(err, ": round 1, ", process)  # a participant thread started training
    time.sleep(3)
    interrupt(process, sig, err)
    assert (tmp_path / "run" / "config.toml").exists()  # the run directory a coordinator can resume


@pytest.mark.slow
@pytest.mark.parametrize("sig", SIGNALS, ids=lambda s: s.name)
def test_participant_stops_on_a_signal_mid_training(demo_root, tmp_path, sig, caplog):
    """... and tells the coordinator it leaves, which drops it at once (not when its lease lapses)."""
    caplog.set_level(logging.INFO, logger="coordinator.rounds")
    config = small_config(demo_root, *ENDLESS, *ONE_PARTICIPANT, "federation.lease_s=60")
    server = CoordinatorServer(config, tmp_path / "run", ServerOptions(insecure=True, device="cpu"))
    port = server.start()
    try:
        command = [str(BIN / "zk0-participant"), "--coordinator", f"127.0.0.1:{port}", "--dataset", "demo:p0"]
        command += ["--insecure", "--device", "cpu", "--no-progress"]
        process, _out, err = start(command, tmp_path)
        wait_for_text(err, "p0: round 1, ", process)
        time.sleep(3)
        interrupt(process, sig, err)
        assert "participant p0 left (interrupted)" in caplog.text
    finally:
        server.stop()


@pytest.mark.slow
@pytest.mark.parametrize("sig", SIGNALS, ids=lambda s: s.name)
def test_coordinator_stops_on_a_signal(demo_root, tmp_path, sig):
    config_path = tmp_path / "config.toml"
    config_path.write_text(config_to_toml(small_config(demo_root, *ENDLESS, *ONE_PARTICIPANT)))
    command = [str(BIN / "zk0-coordinator"), "serve", "--config", str(config_path)]
    command += [
        "--run-dir",
        str(tmp_path / "run"),
        "--port",
        str(free_port()),
        "--insecure",
        "--device",
        "cpu",
    ]
    process, out, err = start(command, tmp_path)
    wait_for_text(out, "serving on", process)
    interrupt(process, sig, err)
    assert (tmp_path / "run" / "state.json").exists() or (tmp_path / "run" / "config.toml").exists()
