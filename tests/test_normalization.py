"""Shared normalization: what the coordinator sends at join, and what a participant then normalizes with."""

import grpc
import numpy as np
import pytest
import torch
from conftest import small_config

from coordinator.server import CoordinatorServer, ServerOptions
from participant.runtime import ParticipantRuntime
from zk0.data import open_source
from zk0.normalization import NORMALIZED, stats_from_json, stats_to_json, with_shared
from zk0.v1 import federation_pb2 as pb
from zk0.v1 import federation_pb2_grpc as pb_grpc


def test_stats_round_trip_and_merge():
    stats = {
        "observation.state": {"mean": np.arange(6.0), "std": np.ones(6)},
        "action": {"mean": np.full(6, 2.0), "std": np.full(6, 3.0)},
        "observation.images.front": {"mean": np.zeros((3, 1, 1))},
    }
    text = stats_to_json(stats)
    assert "observation.images.front" not in text
    back = stats_from_json(text)
    assert np.array_equal(back["action"]["std"], stats["action"]["std"])
    own = {"observation.state": {"mean": np.zeros(6)}, "observation.images.front": {"mean": np.ones(3)}}
    merged = with_shared(own, back)
    assert merged["observation.images.front"] is own["observation.images.front"]
    assert all(merged[key] is back[key] for key in NORMALIZED)
    with pytest.raises(ValueError, match="lack"):
        stats_from_json('{"action": {}}')


def normalizer_stats(runtime: ParticipantRuntime) -> dict:
    step = next(s for s in runtime.bundle.preprocessor.steps if type(s).__name__ == "NormalizerProcessorStep")
    return step.stats


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["coordinator", "local"])
def test_participants_normalize_as_the_config_says(demo_root, tmp_path, mode):
    config = small_config(demo_root, f'data.normalization="{mode}"')
    server = CoordinatorServer(config, tmp_path / "run", ServerOptions(insecure=True, device="cpu"))
    port = server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            reply = pb_grpc.FederationStub(channel).Join(
                pb.JoinRequest(participant_name="probe", dataset=pb.DatasetDescription(repo_id="x")),
                timeout=10,
            )
    finally:
        server.stop()
    eval_stats = open_source("demo:eval", config).meta.stats
    own = open_source("demo:p1", config)
    if mode == "local":
        assert reply.normalization_json == ""
        runtime = ParticipantRuntime(config, own, "cpu", False, None)
        expected = own.meta.stats
    else:
        shared = stats_from_json(reply.normalization_json)
        np.testing.assert_allclose(shared["action"]["mean"], eval_stats["action"]["mean"])
        runtime = ParticipantRuntime(config, own, "cpu", False, shared)
        expected = eval_stats
    used = normalizer_stats(runtime)
    for key in NORMALIZED:
        for name in ("mean", "std"):
            torch.testing.assert_close(
                torch.as_tensor(used[key][name]).double(), torch.as_tensor(expected[key][name]).double()
            )
