"""The centralized baseline is scored like a federated run (its round-0 number is the coordinator's), on the
device it is told, and leaves the same reports: final/ with a model card, best/, and the charts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import small_config

from coordinator.server import CoordinatorServer, ServerOptions
from zk0.centralized import run_centralized

ROOT = Path(__file__).parent.parent


@pytest.mark.slow
def test_centralized_round_zero_equals_the_coordinators_and_it_writes_the_federated_reports(
    demo_root, tmp_path
):
    # a device this machine lacks: only the `device` argument can make the run work
    config = small_config(demo_root, 'train.device="mps"')
    # The coordinator evaluates the initial global model as it prepares the run (round 0 of metrics.jsonl).
    server = CoordinatorServer(config, tmp_path / "federated", ServerOptions(insecure=True, device="cpu"))
    federated = server.store.run.read_records()[0]
    server.store.run.close()

    run = tmp_path / "centralized"
    history = run_centralized(config, run, progress=False, device="cpu")

    assert federated.round == history[0].round == 0
    assert history[0].eval.composite == federated.eval.composite
    assert history[0].eval.datasets == federated.eval.datasets
    assert history[0].version == federated.version  # the same initial model, byte for byte

    assert [json.loads(line)["round"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [0, 1]
    card = (run / "final" / "README.md").read_text()
    assert "# SmolVLA fine-tuned with zk0: centralized baseline" in card
    assert "| Strategy | centralized, mu = 0 |" in card
    best = history[-1].best
    assert f"| Best model | round {best.round}, version `{best.version}` |" in card
    # each dataset under its name, described as a participant describes itself at join
    assert "| p0 | zk0-demo/p0 | 3 | 90 | 30 | observation.state, action, observation.images.front," in card
    assert "| eval | zk0-demo/eval | 3 | 90 |" in card
    assert (run / "best" / "model.safetensors").is_file() and (run / "final" / "model.safetensors").is_file()
    assert (run / "eval_loss.png").stat().st_size > 0 and (run / "hyperparameters.png").stat().st_size > 0
