"""Membership over real gRPC on loopback: sessions, Leave, join storms, names, participants.json, logs.

The coordinator here is the real Coordinator + FederationService + RunStore serving a one-tensor model, so
no policy is built; its clock is the Coordinator's own `clock` parameter, advanced by the test, so leases
lapse without waiting for them.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from concurrent import futures
from pathlib import Path

import grpc
import pytest
import torch
from conftest import small_config

from coordinator import strategies
from coordinator.features import feature_differences
from coordinator.membership import TokenBucket, check_name, public_source, waiting_line
from coordinator.rounds import Coordinator
from coordinator.service import FederationService
from coordinator.store import PARTICIPANTS_FILE, RunStore
from participant.client import ClientOptions, ParticipantClient
from zk0.config import config_to_toml, load_config
from zk0.errors import Zk0Error
from zk0.payload import sha256_hex
from zk0.tensors import Manifest, encode_state
from zk0.transport import GRPC_OPTIONS
from zk0.v1 import federation_pb2 as pb
from zk0.v1 import federation_pb2_grpc as pb_grpc

CONFIGS = Path(__file__).parent.parent / "configs"
LEASE_S = 30.0
STATE = {"observation.state": {"dtype": "float32", "shape": [6]}}
RUN_FEATURES = {
    **STATE,
    "action": {"dtype": "float32", "shape": [6]},
    "observation.images.front": {"dtype": "video", "shape": [48, 64, 3]},
    "timestamp": {"dtype": "float32", "shape": [1]},
}


class Clock:
    """The coordinator's clock, moved by the test."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Served:
    def __init__(self, tmp_path: Path, *overrides: str, features: dict | None = None) -> None:
        self.config = load_config(
            CONFIGS / "demo.toml",
            [f"federation.lease_s={LEASE_S}", "federation.min_participants=2", *overrides],
        )
        self.clock = Clock()
        self.store, _ = RunStore.open(tmp_path / "run", self.config)
        state = {"w": torch.zeros(4)}
        self.coordinator = Coordinator(
            self.config,
            self.store,
            Manifest.of(state),
            strategies.make(self.config),
            clock=self.clock,
            features=features,
            fps=30.0,
        )
        data = encode_state(state)
        self.coordinator.set_global(0, data, self.store.save_global(0, data))
        service = FederationService(
            self.coordinator, tokens=None, config_toml=config_to_toml(self.config), frozen_sha256=""
        )
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), options=GRPC_OPTIONS)
        pb_grpc.add_FederationServicer_to_server(service, self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.port}", options=GRPC_OPTIONS)
        self.stub = pb_grpc.FederationStub(self.channel)

    def join(self, name: str, session: str = "", features: dict | None = None, **dataset) -> pb.JoinResponse:
        description = pb.DatasetDescription(
            repo_id=dataset.get("repo_id", f"someone/{name}"),
            features=[
                pb.FeatureSpec(name=k, dtype=v["dtype"], shape=v["shape"])
                for k, v in (features or {}).items()
            ],
            episodes=3,
            frames=90,
            fps=dataset.get("fps", 30.0),
        )
        request = pb.JoinRequest(participant_name=name, dataset=description, session_id=session)
        return self.stub.Join(request, timeout=10)

    def close(self) -> None:
        self.channel.close()
        self.server.stop(grace=None).wait()


@pytest.fixture
def served(tmp_path):
    made: list[Served] = []

    def make(*overrides: str, features: dict | None = None) -> Served:
        made.append(Served(tmp_path / str(len(made)), *overrides, features=features))
        return made[-1]

    yield make
    for s in made:
        s.close()


def refused(call, *args, **kwargs) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as error:
        call(*args, **kwargs)
    return error.value


def test_a_second_live_session_under_a_name_is_refused_and_calls_need_the_session(served):
    s = served()
    first = s.join("p0")
    assert len(first.session_id) >= 32
    # a second process under the same name, while the first one's lease is live
    second = refused(s.join, "p0")
    assert second.code() == grpc.StatusCode.ALREADY_EXISTS and "another live session" in second.details()
    assert refused(s.join, "p0", session="forged").code() == grpc.StatusCode.ALREADY_EXISTS
    # the first one's second join (with its dataset) is the same session
    again = s.join("p0", session=first.session_id, features=STATE)
    assert again.session_id == first.session_id
    assert s.coordinator._members["p0"].ready

    version = s.coordinator.global_version
    calls = {
        "GetTask": lambda sid: s.stub.GetTask(
            pb.GetTaskRequest(participant_id="p0", session_id=sid), timeout=10
        ),
        "DownloadModel": lambda sid: list(
            s.stub.DownloadModel(
                pb.DownloadModelRequest(participant_id="p0", version=version, session_id=sid), timeout=10
            )
        ),
        "UploadUpdate": lambda sid: s.stub.UploadUpdate(
            iter(
                [pb.UploadUpdateRequest(header=pb.UpdateHeader(participant_id="p0", round=1, session_id=sid))]
            ),
            timeout=10,
        ),
        "ReportEvaluation": lambda sid: s.stub.ReportEvaluation(
            pb.ReportEvaluationRequest(participant_id="p0", round=1, version=version, session_id=sid),
            timeout=10,
        ),
    }
    for what, call in calls.items():
        for sid in ("", "stale"):
            assert refused(call, sid).code() == grpc.StatusCode.FAILED_PRECONDITION, (what, sid)
    assert s.stub.GetTask(pb.GetTaskRequest(participant_id="p0", session_id=first.session_id)).HasField(
        "wait"
    )
    assert len(calls["DownloadModel"](first.session_id)) >= 2  # info + chunks
    beat = s.stub.Heartbeat(pb.HeartbeatRequest(participant_id="p0", session_id="stale"), timeout=10)
    assert not beat.registered
    renewed_until = s.coordinator._members["p0"].lease_until

    # a heartbeat with a stale session renews nothing; once the lease lapses, the name is free again
    s.clock.now = renewed_until + 1
    other = s.join("p0")
    assert other.session_id != first.session_id
    stale = s.stub.Heartbeat(pb.HeartbeatRequest(participant_id="p0", session_id=first.session_id))
    assert not stale.registered
    assert refused(calls["GetTask"], first.session_id).code() == grpc.StatusCode.FAILED_PRECONDITION
    assert s.stub.Heartbeat(pb.HeartbeatRequest(participant_id="p0", session_id=other.session_id)).registered


def test_a_participant_that_leaves_is_dropped_from_its_round_at_once(served):
    s = served("federation.min_updates=1")
    sessions = {n: s.join(n, features=STATE).session_id for n in ("a", "b")}
    state = s.coordinator._start_round(1, 1)
    assert state.outstanding() == {"a", "b"}
    wrong = s.stub.Leave(pb.LeaveRequest(participant_id="a", session_id="stale", reason="x"), timeout=10)
    assert not wrong.left and state.outstanding() == {"a", "b"}
    reply = s.stub.Leave(pb.LeaveRequest(participant_id="a", session_id=sessions["a"], reason="interrupted"))
    assert reply.left
    assert state.dropped == {"a"} and state.outstanding() == {"b"}
    assert "a" not in s.coordinator._members
    # and its name is free for the next process at once
    assert s.join("a").session_id != sessions["a"]


def test_a_participant_stopped_by_an_error_says_it_leaves(served, small_demo, caplog):
    caplog.set_level(logging.INFO, logger="coordinator.rounds")
    s = served("data.fps=15")  # the dataset is valid alone (30 fps): only the run's config refuses it
    options = ClientOptions(
        coordinator=f"127.0.0.1:{s.port}",
        dataset=str(small_demo.participant_datasets[0]),
        name="c",
        insecure=True,
        device="cpu",
        progress=False,
        give_up_s=10,
    )
    with pytest.raises(Zk0Error, match="fps"):
        ParticipantClient(options).run()
    assert "c" not in s.coordinator._members  # gone now, not once its 30 s lease lapses
    assert "participant c left (stopped by an error (Zk0Error))" in caplog.text


def test_a_join_storm_is_bounded_and_rounds_sample_only_live_ready_members(served):
    s = served(
        "federation.max_members=25",
        "federation.joins_per_second=2",
        "federation.join_burst=20",
        "federation.min_updates=1",
    )
    codes: dict[str, int] = {}

    def storm(prefix: str, count: int) -> None:
        for i in range(count):
            try:
                s.join(f"{prefix}{i}", features=STATE)
                codes["OK"] = codes.get("OK", 0) + 1
            except grpc.RpcError as e:
                assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, e
                key = "rate" if "joins_per_second" in e.details() else "full"
                assert key == "rate" or "federation.max_members" in e.details(), e.details()
                codes[key] = codes.get(key, 0) + 1

    storm("storm-a-", 200)  # one instant: the burst gets in, the rest is rate-limited
    assert codes == {"OK": 20, "rate": 180}
    s.clock.now += 10.0  # 20 tokens again, but only 5 free places
    storm("storm-b-", 200)  # members are full after 5 of them
    assert codes == {"OK": 25, "rate": 180, "full": 195}
    assert len(s.coordinator._members) == 25

    # the storm's names never come back; two real participants join and keep their leases, one more only
    # connects (never describes its dataset)
    s.clock.now += LEASE_S + 1
    s.join("honest-a", features=STATE)
    s.join("honest-b", features=STATE)
    s.join("loading")
    state = s.coordinator._start_round(1, 1)
    assert state.sampled == ["honest-a", "honest-b"]
    assert set(s.coordinator._members) == {"honest-a", "honest-b", "loading"}
    s.clock.now += LEASE_S + 1
    s.coordinator._expire_leases(s.clock.now)
    assert not s.coordinator._members  # the one that never described a dataset lapsed too


def test_joins_do_not_write_participants_json_sampling_does_once(served):
    s = served("federation.min_updates=1")
    for name in ("a", "b"):
        s.join(name, features=STATE)
    path = s.store.path / PARTICIPANTS_FILE
    assert not path.exists()
    s.coordinator._start_round(1, 1)
    assert set(s.store.participants()) == {"a", "b"}
    inode = path.stat().st_ino
    s.coordinator._start_round(1, 2)  # the same members: nothing changed, nothing written
    assert path.stat().st_ino == inode


@pytest.mark.parametrize("name", ["p0\n", "p0\r", "../p0", "", "-p0", "p" * 65, "p 0"])
def test_bad_names_are_refused(served, name):
    s = served()
    error = refused(s.join, name)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "participant name" in error.details()
    with pytest.raises(Zk0Error):
        check_name(name)
    assert not s.coordinator._members


def test_a_dataset_with_another_camera_is_refused_naming_it(served):
    s = served(features=RUN_FEATURES)
    session = s.join("p0").session_id  # the first join, before the dataset is built, carries no features
    theirs = {k: v for k, v in RUN_FEATURES.items() if k != "observation.images.front"}
    theirs["observation.images.wrist"] = RUN_FEATURES["observation.images.front"]
    error = refused(s.join, "p0", session=session, features=theirs)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "camera observation.images.wrist is not one of the run's cameras (observation.images.front)" in (
        error.details()
    )
    assert "p0" not in s.coordinator._members
    # a sampled member whose re-join no longer fits is refused, and out of its round at once
    sessions = {n: s.join(n, features=RUN_FEATURES).session_id for n in ("p1", "p2")}
    state = s.coordinator._start_round(1, 1)
    assert (
        refused(s.join, "p1", session=sessions["p1"], features=theirs).code()
        == grpc.StatusCode.INVALID_ARGUMENT
    )
    assert state.dropped == {"p1"} and state.outstanding() == {"p2"}


def test_feature_differences_name_each_difference():
    run = RUN_FEATURES
    assert feature_differences(run, 30, run, 30) == []
    image = {**run, "observation.images.front": {"dtype": "image", "shape": [480, 640, 3]}}
    assert feature_differences(run, 30, image, 30) == []  # stored as frames, at another resolution: fine
    theirs = {
        "observation.state": {"dtype": "float32", "shape": [7]},
        "action": {"dtype": "float64", "shape": [6]},
        "observation.images.wrist": {"dtype": "video", "shape": [48, 64, 3]},
    }
    assert feature_differences(run, 30, theirs, 25) == [
        "observation.state shape [7] differs from the run's [6]",
        "action dtype float64 differs from the run's float32",
        "camera observation.images.wrist is not one of the run's cameras (observation.images.front)",
        "camera observation.images.front is missing",
        "fps 25 differs from the run's 30",
    ]
    assert (
        feature_differences(run, 30, {}, 30)[0]
        == "feature observation.state is missing (the run's is float32 [6])"
    )


def test_the_join_log_names_participants_never_their_paths(served, caplog):
    caplog.set_level(logging.INFO, logger="coordinator.rounds")
    s = served()
    session = s.join("p0", repo_id="/home/alice/robots/run-3").session_id
    s.join("p0", session=session, features=STATE, repo_id="local/run-3")
    s.join("p1", features=STATE, repo_id="lerobot/svla_so100_pickplace")
    assert "/home/alice" not in caplog.text and "run-3" not in caplog.text
    assert "participant p0 joined with a local dataset" in caplog.text
    assert "participant p1 joined with lerobot/svla_so100_pickplace" in caplog.text
    assert public_source("zk0-demo/p1") == "zk0-demo/p1"
    assert public_source("C:\\data\\x") == public_source("~/x") == "a local dataset"


def test_a_waiting_coordinator_says_who_it_has_and_how_many_it_waits_for(served, caplog):
    caplog.set_level(logging.INFO, logger="coordinator.rounds")
    s = served("federation.min_participants=3", "federation.min_updates=1")
    s.join("b", features=STATE)
    s.join("a", features=STATE)
    stop = threading.Event()
    waiter = threading.Thread(target=s.coordinator._wait_for_participants, args=(stop,), daemon=True)
    waiter.start()
    try:
        s.clock.now += 11.0
        deadline = time.monotonic() + 30
        while "waiting for 1 more participant (have: a, b)" not in caplog.text:
            assert time.monotonic() < deadline, caplog.text
            time.sleep(0.05)
    finally:
        stop.set()
        waiter.join(timeout=10)
    assert waiting_line(2, []) == "waiting for 2 more participants (have: none)"


def test_token_bucket():
    bucket = TokenBucket(rate=2.0, burst=3, now=0.0)
    assert [bucket.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.take(0.5) and not bucket.take(0.5)
    assert [bucket.take(100.0) for _ in range(4)] == [True, True, True, False]


def test_upload_header_carries_the_session():
    header = pb.UpdateHeader(participant_id="p0", session_id="s", sha256=sha256_hex(b""))
    from zk0.validation import UpdateHeader

    assert UpdateHeader.from_proto(header).session_id == "s"
    assert UpdateHeader.from_proto(header).to_proto().session_id == "s"


def test_a_second_participant_process_under_a_live_name_stops_with_one_line(served):
    s = served()
    s.join("p0")
    options = ClientOptions(
        coordinator=f"127.0.0.1:{s.port}", dataset="demo:p0", name="p0", insecure=True, give_up_s=10
    )
    client = ParticipantClient(options)
    try:
        with pytest.raises(Zk0Error, match="ALREADY_EXISTS: participant p0 is already taking part") as error:
            client.join()
    finally:
        client.channel.close()
    assert "\n" not in str(error.value)


def test_the_coordinator_checks_joins_against_its_evaluation_datasets(demo_root, tmp_path):
    """The run's features come from the coordinator's evaluation datasets (coordinator/server.py)."""
    from coordinator.server import CoordinatorServer, ServerOptions
    from participant.runtime import description
    from zk0.data import open_source

    config = small_config(demo_root)
    own = description(open_source("demo:p0", config), "demo:p0")
    renamed = pb.DatasetDescription()
    renamed.CopyFrom(own)
    (camera,) = [f for f in renamed.features if f.name.startswith("observation.images.")]
    run_camera, camera.name = camera.name, "observation.images.wrist"
    server = CoordinatorServer(config, tmp_path / "run", ServerOptions(insecure=True, device="cpu"))
    port = server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}", options=GRPC_OPTIONS) as channel:
            stub = pb_grpc.FederationStub(channel)
            assert stub.Join(pb.JoinRequest(participant_name="p0", dataset=own), timeout=30).session_id
            error = refused(stub.Join, pb.JoinRequest(participant_name="p1", dataset=renamed), timeout=30)
    finally:
        server.stop()
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (
        f"camera observation.images.wrist is not one of the run's cameras ({run_camera})" in error.details()
    )
    assert f"camera {run_camera} is missing" in error.details()


def renamed_camera_copy(source: Path, target: Path, old: str, new: str) -> Path:
    """A copy of a LeRobot dataset whose camera `old` is called `new`: features, stats, episode metadata
    columns and media folders, as a dataset recorded with another camera name would be."""
    import pyarrow.parquet as pq

    shutil.copytree(source, target)
    for media in ("videos", "images"):
        if (target / media / old).exists():
            (target / media / old).rename(target / media / new)
    for name in ("info.json", "stats.json"):
        path = target / "meta" / name
        path.write_text(path.read_text().replace(f'"{old}"', f'"{new}"'))
    for path in (target / "meta" / "episodes").rglob("*.parquet"):
        table = pq.read_table(path)
        pq.write_table(table.rename_columns([c.replace(old, new) for c in table.column_names]), path)
    return target


@pytest.mark.slow
def test_a_participant_whose_camera_is_named_differently_stops_with_one_line(demo_root, tmp_path):
    """A real participant process on a dataset recorded with a wrist camera, against a run whose policy
    sees a front camera: refused at its join with the dataset's description, exit 2, not retried."""
    from coordinator.server import CoordinatorServer, ServerOptions
    from zk0.data import open_source

    config = small_config(demo_root)
    source = open_source("demo:p0", config)  # generated if this test runs first
    dataset = renamed_camera_copy(
        source.ref.root, tmp_path / "wrist-data", "observation.images.front", "observation.images.wrist"
    )
    server = CoordinatorServer(config, tmp_path / "run", ServerOptions(insecure=True, device="cpu"))
    port = server.start()
    config_path = tmp_path / "config.toml"
    config_path.write_text(config_to_toml(config))
    try:
        result = subprocess.run(
            [str(Path(sys.executable).parent / "zk0-participant"), "--coordinator", f"127.0.0.1:{port}"]
            + ["--dataset", str(dataset), "--insecure", "--device", "cpu", "--no-progress"]
            + ["--give-up-after", "30"],
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        server.stop()
    assert result.returncode == 2, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("zk0-participant: error: "), result.stderr[-3000:]
    assert "INVALID_ARGUMENT" in last and (
        "camera observation.images.wrist is not one of the run's cameras (observation.images.front)" in last
    )
    assert "retrying" not in result.stderr
    assert "wrist-data" not in server.coordinator._members
