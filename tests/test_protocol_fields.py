"""Every wire field is read by someone: the round's deadline, manifest and planned hyperparameters reach the
participant, which checks the manifest before downloading, stops training at the deadline, and logs an
evaluation the coordinator did not record. (test_protos checks that the retired fields are reserved.)

The fast tests drive the real coordinator over real gRPC on 127.0.0.1 with the synthetic model of
test_intake; the slow ones add a real participant on the demo.
"""

from __future__ import annotations

import logging
import threading

import pytest
from conftest import small_config
from test_intake import Federation, base_state

from coordinator import strategies
from coordinator.rounds import Coordinator, TaskKind
from coordinator.store import RunStore
from participant.client import ClientOptions, ParticipantClient
from zk0.tensors import Manifest, encode_state
from zk0.v1 import federation_pb2 as pb

ONE = ("federation.min_participants=1", "federation.min_updates=1")  # a round with one participant


@pytest.fixture
def federation(tmp_path):
    made: list[Federation] = []

    def make(*overrides: str) -> Federation:
        made.append(Federation(tmp_path, *overrides))
        return made[-1]

    yield make
    for fed in made:
        fed.close()


def test_a_train_task_carries_the_round_deadline_and_the_planned_hyperparameters(federation):
    fed = federation(
        *ONE,
        "federation.round_timeout_s=45",
        "train.local_steps=3",
        "train.lr=0.002",
        "federation.mu=0.05",
    )
    dataset = pb.DatasetDescription(
        repo_id="synthetic", features=[pb.FeatureSpec(name="action", dtype="float32", shape=[2])]
    )
    join = fed.stub.Join(pb.JoinRequest(participant_name="p0", dataset=dataset), timeout=10)
    assert join.lease_seconds == fed.config.federation.lease_s  # the one statement of the lease
    fed.sessions["p0"] = join.session_id
    fed.driver.start()
    task = fed.task("p0")
    assert 0 < task.deadline_seconds <= 45
    hp = task.hyperparameters
    assert (hp.local_steps, hp.lr, hp.mu) == (3, 0.002, 0.05)
    assert Manifest.from_proto(task.manifest) == Manifest.of(fed.base)
    info = next(
        fed.stub.DownloadModel(
            pb.DownloadModelRequest(
                participant_id="p0", version=task.model_version, session_id=fed.sessions["p0"]
            ),
            timeout=10,
        )
    ).info
    assert (info.version, info.size) == (task.model_version, task.model_size)
    beat = fed.stub.Heartbeat(
        pb.HeartbeatRequest(participant_id="p0", session_id=fed.sessions["p0"]), timeout=10
    )
    assert beat.registered and beat.run_active


def test_a_participant_is_not_sent_a_round_whose_deadline_has_passed(tmp_path):
    now = [100.0]
    config = small_config(tmp_path / "demo", "federation.round_timeout_s=30", "federation.lease_s=600")
    store, _ = RunStore.open(tmp_path / "run", config)
    state = base_state()
    coordinator = Coordinator(
        config, store, Manifest.of(state), strategies.make(config), clock=lambda: now[0]
    )
    data = encode_state(state)
    coordinator.set_global(0, data, store.save_global(0, data))
    coordinator.join(
        "p0", {"repo_id": "synthetic", "features": {"action": {"dtype": "float32", "shape": [2]}}}
    )
    coordinator._start_round(1, 1)

    task = coordinator.task_for("p0")
    assert task.kind is TaskKind.TRAIN and task.deadline_s == 30
    now[0] += 29.5
    assert coordinator.task_for("p0").deadline_s == pytest.approx(0.5)
    now[0] += 0.5  # the driver has not closed the round yet: the task would arrive too late to count
    task = coordinator.task_for("p0")
    assert task.kind is TaskKind.WAIT and task.wait_s > 0


def test_an_evaluation_the_coordinator_does_not_record_is_logged_with_its_reason(federation, caplog):
    fed = federation(*ONE)
    fed.start("p0")
    task = fed.task("p0")
    client = ParticipantClient(
        ClientOptions(coordinator=fed.target, dataset="demo:p0", name="p0", insecure=True)
    )
    client.session = fed.sessions["p0"]
    try:
        with caplog.at_level(logging.WARNING, logger="participant.client"):
            client.report_evaluation(task, {"loss": 0.5, "samples": 4.0})
            assert not caplog.records
            client.report_evaluation(task, {"loss": 0.5, "samples": 4.0})
    finally:
        client.channel.close()
    assert [r.getMessage() for r in caplog.records] == [
        "p0: round 1 evaluation not recorded: participant p0 already reported its evaluation of round 1"
    ]
    assert fed.coordinator._round.evaluations["p0"] == {"loss": 0.5, "samples": 4.0}


@pytest.mark.slow
def test_a_straggler_stops_training_at_the_round_deadline_and_uploads_nothing(demo_root, tmp_path, caplog):
    """With far more local steps than the deadline allows, the participant stops at each attempt's deadline
    (instead of training on while the rounds go on without it) and the run stops for lack of updates."""
    from test_federation import client_thread

    from coordinator.rounds import RunStopped
    from coordinator.server import CoordinatorServer, ServerOptions

    config = small_config(
        demo_root,
        'data.participants=["demo:p0"]',
        "federation.min_participants=1",
        "federation.min_updates=1",
        "federation.round_timeout_s=8",
        "federation.max_round_attempts=2",
        "train.local_steps=100000",
        "federation.lease_s=10",  # the grace the stopped run gives the participant to hear it is done
    )
    server = CoordinatorServer(config, tmp_path / "run", ServerOptions(insecure=True, device="cpu"))
    errors: list = []
    with caplog.at_level(logging.INFO):
        participant = client_thread(server.start(), "demo:p0", threading.Lock(), errors)
        with pytest.raises(RunStopped):
            server.wait(timeout=600)
        participant.join(timeout=60)
    assert not participant.is_alive() and not errors
    stopped = [r.getMessage() for r in caplog.records if "deadline passed after" in r.getMessage()]
    assert len(stopped) == 2, caplog.text[-3000:]
    assert all(
        m.endswith("not uploading (raise federation.round_timeout_s or lower train.local_steps)")
        for m in stopped
    )
    assert not list((tmp_path / "run").rglob("p0.safetensors"))


@pytest.mark.slow
def test_a_task_whose_tensors_differ_from_the_policy_is_refused_before_downloading(federation, demo_root):
    """The task's manifest is checked against the participant's own policy first: nothing is pulled."""
    from participant.runtime import ParticipantRuntime
    from zk0.data import open_source
    from zk0.errors import Zk0Error

    fed = federation(*ONE)
    fed.start("p0")
    task = fed.task("p0")  # the synthetic model's two tensors, not the demo policy's
    config = small_config(demo_root)
    client = ParticipantClient(
        ClientOptions(coordinator=fed.target, dataset="demo:p0", name="p0", insecure=True)
    )
    client.session = fed.sessions["p0"]
    client.runtime = ParticipantRuntime(config, open_source("demo:p0", config), "cpu", False, None)
    try:
        with pytest.raises(Zk0Error, match="tensors differ from this participant's policy"):
            client.train_round(task)
    finally:
        client.channel.close()
    assert fed.coordinator._round.bytes_down == 0
