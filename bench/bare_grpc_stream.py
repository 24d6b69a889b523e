"""The ceiling for the coordinator benchmark: bare grpcio moving a model's bytes down and back up.

A server on loopback holds M fp32 parameters as raw bytes; P participant processes each download the whole
payload and upload it back, in 4 MiB chunks, through the real `Federation` stubs' DownloadModel and
UploadUpdate messages (no safetensors, no hashing, no validation, no spooling). The coordinator benchmark
runs the same rounds through the real servicer, so the ratio of the two is the coordinator's overhead and
holds on a noisy machine.

Run from the repository root: `python -m bench.bare_grpc_stream [--params N] [--participants 2,4,8]`.
"""

import argparse
import multiprocessing as mp
import os
import statistics
import time
from collections.abc import Iterator, Sequence
from concurrent import futures
from dataclasses import dataclass
from multiprocessing.synchronize import Barrier

import grpc

from zk0.transfer import iter_chunks
from zk0.v1 import federation_pb2 as pb
from zk0.v1 import federation_pb2_grpc as pb_grpc

MIB = 1 << 20


def grpc_options(chunk_bytes: int) -> list[tuple[str, int]]:
    """Message bounds that fit one chunk plus the envelope, and nothing much larger."""
    limit = chunk_bytes + MIB
    return [("grpc.max_send_message_length", limit), ("grpc.max_receive_message_length", limit)]


@dataclass(frozen=True)
class Row:
    """One (P, M) cell: every timed round, and what the table prints."""

    participants: int
    payload_bytes: int
    round_seconds: tuple[float, ...]

    @property
    def median_seconds(self) -> float:
        return statistics.median(self.round_seconds)

    @property
    def gb_per_second(self) -> float:
        """Bytes moved per round (each participant: one download, one upload) over the median round time."""
        return 2 * self.participants * self.payload_bytes / self.median_seconds / 1e9


class BareServicer(pb_grpc.FederationServicer):
    """Streams the payload to whoever asks and counts (then drops) what comes back.

    The payload is held pre-sliced into chunk-sized bytes objects, the cheapest way to serve it (no copy
    per download); a coordinator can hold its serialized global model the same way.
    """

    def __init__(self, payload: bytes, chunk_bytes: int) -> None:
        self.size = len(payload)
        self.chunk_bytes = chunk_bytes
        self.chunks = [
            pb.Chunk(offset=offset, data=bytes(piece)) for offset, piece in iter_chunks(payload, chunk_bytes)
        ]

    def DownloadModel(self, request: pb.DownloadModelRequest, context) -> Iterator[pb.DownloadModelResponse]:
        if request.offset % self.chunk_bytes:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"offset {request.offset} is not chunk-aligned")
        yield pb.DownloadModelResponse(info=pb.ModelInfo(version=request.version, size=self.size))
        for chunk in self.chunks[request.offset // self.chunk_bytes :]:
            yield pb.DownloadModelResponse(chunk=chunk)

    def UploadUpdate(self, request_iterator, context) -> pb.UploadUpdateResponse:
        size = next(request_iterator).header.size
        received = sum(len(message.chunk.data) for message in request_iterator)
        if received != size:
            return pb.UploadUpdateResponse(
                accepted=False, reason=f"received {received} bytes, declared {size}"
            )
        return pb.UploadUpdateResponse(accepted=True)


def start_server(payload: bytes, chunk_bytes: int, max_workers: int) -> tuple[grpc.Server, int]:
    """A started loopback server and its ephemeral port."""
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers), options=grpc_options(chunk_bytes)
    )
    pb_grpc.add_FederationServicer_to_server(BareServicer(payload, chunk_bytes), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, port


def _round_trip(stub: pb_grpc.FederationStub, name: str, chunk_bytes: int) -> None:
    responses = stub.DownloadModel(pb.DownloadModelRequest(participant_id=name, version="bare"))
    size = next(responses).info.size
    buffer = bytearray(size)
    for response in responses:
        chunk = response.chunk
        buffer[chunk.offset : chunk.offset + len(chunk.data)] = chunk.data

    def upload() -> Iterator[pb.UploadUpdateRequest]:
        yield pb.UploadUpdateRequest(header=pb.UpdateHeader(participant_id=name, size=size))
        for offset, piece in iter_chunks(buffer, chunk_bytes):
            yield pb.UploadUpdateRequest(chunk=pb.Chunk(offset=offset, data=bytes(piece)))

    reply = stub.UploadUpdate(upload())
    if not reply.accepted:
        raise RuntimeError(f"{name}: upload refused: {reply.reason}")


def _participant(
    index: int, port: int, chunk_bytes: int, rounds: int, barrier: Barrier, done: mp.Queue
) -> None:
    """One participant process: connect once, then per round wait for the start, download, upload back."""
    with grpc.insecure_channel(f"127.0.0.1:{port}", options=grpc_options(chunk_bytes)) as channel:
        grpc.channel_ready_future(channel).result(timeout=60)
        stub = pb_grpc.FederationStub(channel)
        for _ in range(rounds):
            barrier.wait()
            _round_trip(stub, f"p{index}", chunk_bytes)
            done.put(index)


def run_rounds(port: int, participants: int, chunk_bytes: int, rounds: int) -> list[float]:
    """Seconds per round, each from the common start until the last participant's upload is acknowledged."""
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(participants + 1)
    done = ctx.Queue()
    procs = [
        ctx.Process(target=_participant, args=(i, port, chunk_bytes, rounds, barrier, done), daemon=True)
        for i in range(participants)
    ]
    for proc in procs:
        proc.start()
    seconds = []
    try:
        for _ in range(rounds):
            barrier.wait(timeout=300)
            start = time.perf_counter()
            for _ in range(participants):
                done.get(timeout=600)
            seconds.append(time.perf_counter() - start)
    finally:
        for proc in procs:
            proc.join(timeout=60)
            if proc.is_alive():
                proc.kill()
    failed = [proc.exitcode for proc in procs if proc.exitcode != 0]
    if failed:
        raise RuntimeError(f"participant processes failed with exit codes {failed}")
    return seconds


def bench(
    params: int, participants: Sequence[int], repeats: int, chunk_bytes: int = 4 * MIB, warmup: int = 1
) -> list[Row]:
    """One Row per participant count: a payload of `params` fp32 values moved 2*P times per round."""
    size = 4 * params
    server, port = start_server(os.urandom(size), chunk_bytes, max_workers=2 * max(participants) + 4)
    try:
        rows = []
        for count in participants:
            seconds = run_rounds(port, count, chunk_bytes, warmup + repeats)[warmup:]
            rows.append(Row(count, size, tuple(seconds)))
        return rows
    finally:
        server.stop(grace=None)


def format_table(rows: Sequence[Row]) -> str:
    lines = [f"{'P':>3} {'payload MB':>11} {'median s':>9} {'GB/s':>6}  rounds (s)"]
    for row in rows:
        rounds = " ".join(f"{s:.2f}" for s in row.round_seconds)
        lines.append(
            f"{row.participants:>3} {row.payload_bytes / 1e6:>11.0f} {row.median_seconds:>9.2f} "
            f"{row.gb_per_second:>6.2f}  {rounds}"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=int, default=100_000_000, help="fp32 parameters in the payload")
    parser.add_argument("--participants", default="2,4,8", help="comma-separated participant counts")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds per participant count")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    parser.add_argument("--chunk-mib", type=float, default=4.0, help="chunk size both ways")
    args = parser.parse_args(argv)
    participants = [int(p) for p in args.participants.split(",")]
    chunk_bytes = int(args.chunk_mib * MIB)
    print(
        f"bare grpcio stream: {args.params:,} fp32 params ({4 * args.params / 1e6:.0f} MB), "
        f"{chunk_bytes / MIB:g} MiB chunks, {args.repeats} timed rounds after {args.warmup} warm-up, "
        f"{os.cpu_count()} CPUs"
    )
    print(format_table(bench(args.params, participants, args.repeats, chunk_bytes, args.warmup)))


if __name__ == "__main__":
    main()
