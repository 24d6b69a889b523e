"""The typed round record (zk0/records.py): every metrics.jsonl line written before it existed loads and
writes back byte for byte, one `latest_rounds` picks the records that count, and an update record carries
the metrics intake requires (one list of them)."""

import json
from pathlib import Path

import pytest

from coordinator.adaptive import records_from_metrics
from zk0 import validation
from zk0.errors import Zk0Error
from zk0.records import (
    UPDATE_METRICS,
    Adaptive,
    Best,
    Evaluation,
    Hyperparameters,
    Participants,
    Refused,
    RoundEntry,
    Seconds,
    Traffic,
    Update,
    latest_rounds,
)
from zk0.rundir import RunDir

FIXTURES = Path(__file__).parent / "fixtures"
# metrics.jsonl of `zk0 simulate` (demo, 2 rounds, adaptive mu and lr on) as written before the record type
# existed (commit 0d966eb), with a failed attempt of round 2 inserted as that code wrote one: no version,
# eval, best, adaptive or aggregate time; a refused and a dropped participant; an update kept from before a
# restart (distance null).
FEDERATED = FIXTURES / "metrics-federated-0d966eb.jsonl"
# metrics.jsonl of `zk0 centralized` (demo, 1 round) as written by the same code.
CENTRALIZED = FIXTURES / "metrics-centralized-0d966eb.jsonl"


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


@pytest.mark.parametrize("old", [FEDERATED, CENTRALIZED], ids=["federated", "centralized"])
def test_old_records_load_and_write_back_byte_for_byte(tmp_path, old):
    run = RunDir(tmp_path)
    for line in lines(old):
        entry = RoundEntry.from_json(json.loads(line))
        assert entry.to_json() == json.loads(line)
        run.record(entry, step=entry.round)
    run.close()
    assert run.metrics_path.read_text() == old.read_text()
    assert [e.to_json() for e in run.read_records()] == [json.loads(line) for line in lines(old)]


def test_an_old_federated_run_reads_through_the_type(tmp_path):
    (tmp_path / "metrics.jsonl").write_text(FEDERATED.read_text())
    records = RunDir(tmp_path).read_records()
    assert [(e.round, e.attempt, e.aggregated) for e in records] == [
        (0, None, True),
        (1, 1, True),
        (2, 1, False),
        (2, 1, True),
    ]
    failed = records[2]
    assert failed.participants.refused[0].participant == "p1" and failed.participants.dropped == ["p2"]
    assert failed.updates["p0"].distance is None and failed.seconds.aggregate is None
    kept = latest_rounds(records)
    assert list(kept) == [0, 1, 2] and kept[2] is records[3]
    first = kept[1]
    assert first.eval.loss == first.eval.composite["loss"] == first.best.loss
    assert first.base_version == kept[0].version and first.hyperparameters.local_steps == 5
    assert first.adaptive.rules and first.adaptive.mu == 0.02 and not first.adaptive.rollback
    assert set(first.train_losses) == {"p0", "p1", "p2"}
    assert first.updates["p0"].bytes == 785552 and first.updates["p0"].metrics["steps"] == 5.0
    history = records_from_metrics(records, base_mu=0.01, base_lr=1e-3)
    assert [h.round for h in history] == [0, 1, 2]
    assert history[0].train_losses == {} and history[0].mu == 0.01  # round 0: base values
    assert history[2].train_losses == kept[2].train_losses and history[2].mu == kept[2].hyperparameters.mu


def test_a_built_record_round_trips():
    entry = RoundEntry(
        round=3,
        attempt=2,
        base_version="b" * 64,
        version="v" * 64,
        hyperparameters=Hyperparameters(lr=1e-3, mu=0.01, local_steps=20, lr_per_participant={"p1": 2e-3}),
        participants=Participants(["p0", "p1", "p2"], ["p0", "p1"], [Refused("p2", "too_large: big")], []),
        updates={
            "p0": Update({"policy_loss": 0.5, "lr": 1e-3}, sample_count=160, bytes=900, distance=0.25),
            "p1": Update({"policy_loss": 0.75}, sample_count=80, bytes=900, distance=None),
        },
        participant_eval={"p0": {"loss": 1.0, "samples": 16.0}},
        bytes=Traffic(down=1800, up=1800),
        seconds=Seconds(wait_participants=0.5, train=3.0, aggregate=0.1),
        eval=Evaluation({"eval": {"loss": 1.5, "samples": 32.0}}, {"loss": 1.5}),
        best=Best(3, "v" * 64, 1.5),
        adaptive=Adaptive(mu=0.02, lr=1e-3, rules=["dynamic mu"], hold=True),
        aggregation={"strategy": "fedavg", "left_out": []},
    )
    data = json.loads(json.dumps(entry.to_json()))
    assert RoundEntry.from_json(data) == entry
    assert data["updates"]["p1"] == {"policy_loss": 0.75, "sample_count": 80, "bytes": 900, "distance": None}
    assert data["aggregation"] == {"strategy": "fedavg", "left_out": []}
    bare = RoundEntry(round=0, version="v0")
    assert bare.to_json() == {"round": 0, "version": "v0"}  # what it lacks is left out, not null
    assert RoundEntry.from_json(bare.to_json()) == bare


def test_an_update_record_carries_the_metrics_intake_requires():
    assert validation.UPDATE_METRICS is UPDATE_METRICS  # one list: intake checks it, the record reads it
    with pytest.raises(Zk0Error, match="policy_loss"):
        Update.from_json({"update_norm": 1.0, "sample_count": 8, "bytes": 10, "distance": 0.1})


def test_a_record_with_an_unknown_key_is_refused_not_dropped_silently():
    with pytest.raises(Zk0Error, match="unknown keys \\['surprise'\\]"):
        RoundEntry.from_json({"round": 1, "surprise": 2})


def test_an_old_centralized_run_reads_through_the_same_type(tmp_path):
    (tmp_path / "metrics.jsonl").write_text(CENTRALIZED.read_text())
    records = RunDir(tmp_path).read_records()
    assert list(latest_rounds(records)) == [0, 1]
    first = records[1]
    assert first.steps == 2 and first.train["policy_loss"] > 0 and first.train_losses == {}
    assert first.hyperparameters == Hyperparameters(lr=0.001, mu=0.0, local_steps=2)  # no per-participant lr
    assert set(first.heldout.datasets) == {"p0", "p1", "p2"} and first.heldout.loss > 0
    assert first.attempt is None and first.participants is None and first.updates is None
    assert first.aggregation == {} and first.best.round == 0
    history = records_from_metrics(records, base_mu=0.0, base_lr=1e-3)
    assert [(h.round, h.mu, h.lr, h.eval_loss) for h in history] == [
        (0, 0.0, 1e-3, records[0].eval.loss),
        (1, 0.0, 0.001, first.eval.loss),
    ]
