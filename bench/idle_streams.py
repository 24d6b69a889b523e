"""Control-call latency of a real coordinator with 0 and with 200 idle UploadUpdate streams open.

A CoordinatorServer on the tiny demo (tokens file, production thread pool and transfer slots); a raw client
joins, then times `--calls` Heartbeat + GetTask calls with no other stream open, then opens 200 streams that
send nothing (100 with a valid token, 100 without) and times the same calls while they are open (within
the header timeout, so the streams holding slots are still there). Prints the medians, the 95th
percentiles, their ratio and the load average.

    .venv/bin/python -m bench.idle_streams [--streams 200] [--calls 200]
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path

import grpc

from zk0.transport import GRPC_OPTIONS, token_metadata
from zk0.v1 import federation_pb2 as pb
from zk0.v1 import federation_pb2_grpc as pb_grpc

TOKENS = {"p0": "p0-token-0123456789", "p1": "p1-token-0123456789"}


def time_calls(stub: pb_grpc.FederationStub, calls: int, session: str) -> list[float]:
    md = token_metadata(TOKENS["p0"])
    seconds = []
    for i in range(calls):
        started = time.perf_counter()
        if i % 2:
            stub.Heartbeat(
                pb.HeartbeatRequest(participant_id="p0", session_id=session), metadata=md, timeout=30
            )
        else:
            stub.GetTask(pb.GetTaskRequest(participant_id="p0", session_id=session), metadata=md, timeout=30)
        seconds.append(time.perf_counter() - started)
    return seconds


def describe(label: str, seconds: list[float]) -> tuple[float, float]:
    median = statistics.median(seconds)
    p95 = statistics.quantiles(seconds, n=20)[-1]
    print(
        f"{label:28s} median {median * 1e3:7.2f} ms   p95 {p95 * 1e3:7.2f} ms   "
        f"max {max(seconds) * 1e3:7.2f} ms"
    )
    return median, p95


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=200)
    parser.add_argument("--calls", type=int, default=200)
    args = parser.parse_args()

    from coordinator.server import CoordinatorServer, ServerOptions
    from zk0.config import load_config
    from zk0.demo import ensure_demo

    logging.basicConfig(level=logging.ERROR)
    work = Path(tempfile.mkdtemp(prefix="zk0-idle-"))
    hold = threading.Event()
    try:
        ensure_demo(work / "demo", seed=0, participants=2, episodes=3, frames_per_episode=20, eval_episodes=2)
        (work / "tokens").write_text("".join(f"{n} {t}\n" for n, t in TOKENS.items()))
        config = load_config(
            Path(__file__).parent.parent / "configs" / "demo.toml",
            [f'demo.root="{work / "demo"}"', 'train.device="cpu"', "eval.batches=1", "federation.lease_s=60"],
        )
        options = ServerOptions(insecure=True, device="cpu", tokens=work / "tokens")
        server = CoordinatorServer(config, work / "run", options)
        port = server.start()
        fed = config.federation
        print(
            f"max_transfers {fed.max_transfers}, header_timeout_s {fed.header_timeout_s:g}, "
            f"cpus {os.cpu_count()}, load average before {os.getloadavg()[0]:.2f}"
        )
        channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=GRPC_OPTIONS)
        stub = pb_grpc.FederationStub(channel)
        md = token_metadata(TOKENS["p0"])
        session = stub.Join(pb.JoinRequest(participant_name="p0"), metadata=md, timeout=30).session_id
        time_calls(stub, 20, session)  # warm-up
        base = describe("0 idle streams", time_calls(stub, args.calls, session))

        def nothing():
            hold.wait()
            return
            yield

        channels = [grpc.insecure_channel(f"127.0.0.1:{port}", options=GRPC_OPTIONS) for _ in range(4)]
        opened = time.perf_counter()
        idle = [
            pb_grpc.FederationStub(channels[i % 4]).UploadUpdate.future(
                nothing(), metadata=token_metadata(TOKENS["p1"]) if i % 2 else (), timeout=300
            )
            for i in range(args.streams)
        ]
        loaded = describe(f"{args.streams} idle streams", time_calls(stub, args.calls, session))
        elapsed = time.perf_counter() - opened
        refused = sum(f.done() for f in idle)
        print(
            f"ratio (with / without)       median {loaded[0] / base[0]:.2f}   "
            f"p95 {loaded[1] / base[1]:.2f}   "
            f"({refused} of {args.streams} streams refused at once, {server.transfers.in_progress} held, "
            f"{elapsed:.1f}s after opening them)"
        )
        print(f"load average (1, 5, 15 min)  {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        hold.set()
        server.stop()
    finally:
        hold.set()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
