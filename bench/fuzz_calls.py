"""A protocol fuzzer: random, malformed and hostile calls of every Federation RPC against a live coordinator.

Each call is one of: random field values (huge/negative offsets and rounds, garbage versions, NaN and Inf
metrics, odd names), wrong oneofs (a chunk where the header belongs, two headers, no header), bad manifests,
random bytes instead of a message, and valid-looking calls under a real name. Every call ends with a status
code; the fuzzer counts them. A healthy coordinator answers every one with a precise code (never UNKNOWN,
never INTERNAL), logs no traceback, and keeps a rate on its refusal lines.

    .venv/bin/python -m bench.fuzz_calls --calls 10000   # starts a tiny demo coordinator of its own
"""

from __future__ import annotations

import argparse
import collections
import logging
import math
import random
import shutil
import string
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc

from zk0.transport import GRPC_OPTIONS, token_metadata
from zk0.v1 import federation_pb2 as pb
from zk0.v1 import federation_pb2_grpc as pb_grpc

SERVICE = "/zk0.v1.Federation/"
METHODS = ("Join", "Heartbeat", "GetTask", "DownloadModel", "UploadUpdate", "ReportEvaluation")
INTS = (0, 1, -1, 2, 7, 2**31, -(2**31), 2**63 - 1, -(2**63), 10**18, 4096)
FLOATS = (0.0, -1.0, 1e-9, 3e38, -3e38, math.inf, -math.inf, math.nan, 1e308)


class Fuzzer:
    def __init__(self, port: int, *, tokens: list[str], names: list[str], version: str, seed: int = 0):
        self.rng = random.Random(seed)
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=GRPC_OPTIONS)
        self.stub = pb_grpc.FederationStub(self.channel)
        self.tokens, self.names, self.version = tokens, names, version
        self.name = names[0] if names else "p0"  # the participant this call claims to be, mostly
        self.codes: collections.Counter[str] = collections.Counter()
        self.examples: dict[str, str] = {}

    # ------------------------------------------------------------------ random values

    def text(self) -> str:
        r = self.rng
        return r.choice(
            [
                "",
                self.name,
                self.name,
                self.name,
                "".join(r.choices(string.printable, k=r.randint(1, 40))),
                "x" * r.choice((64, 65, 1000, 100_000)),
                "\u00e9\u2603\U0001f600" * r.randint(1, 5),
                "../../etc/passwd",
                self.version,
                self.version.upper(),
            ]
        )

    def integer(self) -> int:
        return self.rng.choice(INTS) if self.rng.random() < 0.7 else self.rng.randint(-(2**40), 2**40)

    def number(self) -> float:
        return self.rng.choice(FLOATS) if self.rng.random() < 0.7 else self.rng.uniform(-1e6, 1e6)

    def metrics(self) -> dict[str, float]:
        keys = ["policy_loss", "loss", "samples", "steps", "", "x" * 300, "grad_norm"]
        return {self.rng.choice(keys) + str(i): self.number() for i in range(self.rng.randint(0, 6))}

    def manifest(self) -> pb.TensorManifest:
        return pb.TensorManifest(
            tensors=[
                pb.TensorSpec(name=self.text(), dtype=self.text(), shape=[self.integer() for _ in range(2)])
                for _ in range(self.rng.randint(0, 3))
            ]
        )

    def metadata(self) -> tuple:
        r = self.rng.random()
        if r < 0.3 or not self.tokens:
            return ()
        if r < 0.4:
            return token_metadata("".join(self.rng.choices(string.ascii_letters, k=24)))
        if r < 0.5 or self.name not in self.names:
            return token_metadata(self.rng.choice(self.tokens))
        return token_metadata(self.tokens[self.names.index(self.name)])

    def header(self) -> pb.UpdateHeader:
        return pb.UpdateHeader(
            participant_id=self.text(),
            round=self.integer(),
            base_version=self.text(),
            sample_count=self.integer(),
            metrics=self.metrics(),
            size=self.integer(),
            sha256=self.rng.choice([self.text(), "0" * 64, "g" * 64]),
        )

    def chunk(self) -> pb.Chunk:
        return pb.Chunk(offset=self.integer(), data=self.rng.randbytes(self.rng.choice((0, 1, 100, 70_000))))

    # ------------------------------------------------------------------ calls

    def join(self) -> Callable:
        dataset = pb.DatasetDescription(
            repo_id=self.text(),
            episodes=self.integer(),
            frames=self.integer(),
            fps=self.number(),
            features=[
                pb.FeatureSpec(name=self.text(), dtype=self.text(), shape=[self.integer()])
                for _ in range(self.rng.randint(0, 3))
            ],
        )
        request = pb.JoinRequest(participant_name=self.text(), dataset=dataset)
        return lambda md: self.stub.Join(request, metadata=md, timeout=10)

    def heartbeat(self) -> Callable:
        request = pb.HeartbeatRequest(participant_id=self.text())
        return lambda md: self.stub.Heartbeat(request, metadata=md, timeout=10)

    def get_task(self) -> Callable:
        request = pb.GetTaskRequest(participant_id=self.text())
        return lambda md: self.stub.GetTask(request, metadata=md, timeout=10)

    def download(self) -> Callable:
        request = pb.DownloadModelRequest(
            participant_id=self.text(),
            version=self.rng.choice([self.version, self.text()]),
            offset=self.integer(),
        )
        return lambda md: sum(1 for _ in self.stub.DownloadModel(request, metadata=md, timeout=10))

    def upload(self) -> Callable:
        shape = self.rng.choice(["no messages", "chunk first", "two headers", "header+chunks", "header only"])

        def messages() -> Iterator[pb.UploadUpdateRequest]:
            if shape == "no messages":
                return
            if shape == "chunk first":
                yield pb.UploadUpdateRequest(chunk=self.chunk())
            yield pb.UploadUpdateRequest(header=self.header())
            if shape == "two headers":
                yield pb.UploadUpdateRequest(header=self.header())
            if shape == "header+chunks":
                for _ in range(self.rng.randint(1, 3)):
                    yield pb.UploadUpdateRequest(chunk=self.chunk())

        return lambda md: self.stub.UploadUpdate(messages(), metadata=md, timeout=10)

    def report(self) -> Callable:
        request = pb.ReportEvaluationRequest(
            participant_id=self.text(),
            round=self.integer(),
            version=self.rng.choice([self.version, self.text()]),
            metrics=self.metrics(),
        )
        return lambda md: self.stub.ReportEvaluation(request, metadata=md, timeout=10)

    def raw_bytes(self) -> Callable:
        """Random bytes where a message belongs (often not a parseable protobuf)."""
        method = SERVICE + self.rng.choice(METHODS)
        payload = self.rng.randbytes(self.rng.randint(1, 64))
        if method.endswith("UploadUpdate"):
            call = self.channel.stream_unary(method)
            return lambda md: call(iter([payload, self.rng.randbytes(8)]), metadata=md, timeout=10)
        if method.endswith("DownloadModel"):
            call = self.channel.unary_stream(method)
            return lambda md: sum(1 for _ in call(payload, metadata=md, timeout=10))
        call = self.channel.unary_unary(method)
        return lambda md: call(payload, metadata=md, timeout=10)

    def one(self) -> str:
        make = self.rng.choice(
            [
                self.join,
                self.heartbeat,
                self.get_task,
                self.download,
                self.upload,
                self.report,
                self.raw_bytes,
            ]
        )
        what = make.__name__
        self.name = self.rng.choice(self.names) if self.names else "p0"
        call, metadata = make(), self.metadata()
        try:
            call(metadata)
            code = "OK"
        except grpc.RpcError as e:
            code = e.code().name
            self.examples.setdefault(f"{what} {code}", e.details() or "")
        self.codes[code] += 1
        return code

    def run(self, calls: int) -> collections.Counter:
        for _ in range(calls):
            self.one()
        return self.codes

    def close(self) -> None:
        self.channel.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-tokens", action="store_true", help="a coordinator without a tokens file")
    args = parser.parse_args(argv)

    from coordinator.server import CoordinatorServer, ServerOptions
    from zk0.config import load_config
    from zk0.demo import ensure_demo

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    work = Path(tempfile.mkdtemp(prefix="zk0-fuzz-"))
    try:
        ensure_demo(work / "demo", seed=0, participants=2, episodes=3, frames_per_episode=20, eval_episodes=2)
        tokens = {"p0": "p0-token-0123456789", "p1": "p1-token-0123456789"}
        (work / "tokens").write_text("".join(f"{n} {t}\n" for n, t in tokens.items()))
        config = load_config(
            Path(__file__).parent.parent / "configs" / "demo.toml",
            [
                f'demo.root="{work / "demo"}"',
                'train.device="cpu"',
                "eval.batches=1",
                "federation.lease_s=3",
                "federation.min_participants=2",  # the fuzzer's joins can start a round: uploads reach it
            ],
        )
        server = CoordinatorServer(
            config,
            work / "run",
            ServerOptions(insecure=True, device="cpu", tokens=None if args.no_tokens else work / "tokens"),
        )
        port = server.start()
        fuzzer = Fuzzer(
            port,
            tokens=[] if args.no_tokens else list(tokens.values()),
            names=list(tokens),
            version=server.coordinator.global_version,
        )
        started = time.monotonic()
        codes = fuzzer.run(args.calls)
        seconds = time.monotonic() - started
        fuzzer.close()
        server.stop()
        print(f"{args.calls} calls in {seconds:.1f}s ({args.calls / seconds:.0f}/s)")
        for code, count in codes.most_common():
            print(f"  {code:20s} {count}")
        for key, details in sorted(fuzzer.examples.items()):
            print(f"  e.g. {key}: {details[:100]}")
        return 1 if codes["UNKNOWN"] or codes["INTERNAL"] else 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
