"""A coordinator round on loopback against its ceiling, a bare grpcio stream moving the same bytes.

Per participant count P: the real `Coordinator` + `FederationService` behind a `grpc.server` (the production
GRPC_OPTIONS, a run directory on disk) in a process of its own, holding a synthetic trainable state of
`--params` fp32 values in 256 tensors; P participant processes that are raw stub clients (Join, poll GetTask,
DownloadModel the whole model verified by SHA-256 through `ChunkAssembler`, upload it back unchanged: header
+ chunks of federation.chunk_kib). No training, no evaluation: what is timed is the protocol, the spooling,
the verification, the validation and the aggregation. Each round is timed by the coordinator, from the
round's start to its aggregated global model saved (`entry.seconds`: collect + aggregate); the coordinator
process samples its own RSS and reports its VmHWM (its whole life: start-up, warm-up round, timed rounds).

In the same invocation, for the same P and bytes, `bench.bare_grpc_stream` (a servicer that streams
pre-sliced chunks and drops what comes back; P fresh processes download and upload at a barrier) gives the
ceiling, its rounds half before and half after ours; the table prints the ratio. Every process of both runs
under the one malloc setting below (printed).

    .venv/bin/python -m bench.coordinator_round [--params N] [--participants 2,4,8] [--rounds R]
        [--trace DIR]  per-P timelines: each upload's and aggregation's steps, and the RSS every 20 ms
"""

from __future__ import annotations

import argparse
import inspect
import logging
import multiprocessing as mp
import os
import resource
import shutil
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.bare_grpc_stream import Row

# One malloc setting for every process of both benches (children inherit it; glibc reads it at start-up).
# A fixed 32 MiB mmap threshold keeps the 4 MiB chunk buffers (and their message copies) on the heap, reused,
# instead of glibc's dynamic threshold flipping them between the heap and a fresh page-faulting mmap per
# chunk, which moves throughput a lot from run to run; two arenas keep the heap memory that grpc's many
# threads free and reuse from multiplying per thread (the coordinator's RSS otherwise grows with P).
MALLOC_ENV = {
    "MALLOC_MMAP_THRESHOLD_": str(32 << 20),
    "MALLOC_TRIM_THRESHOLD_": str(128 << 20),
    "MALLOC_ARENA_MAX": "2",
}

TENSORS = 256  # weight + bias for 128 layers


@dataclass(frozen=True)
class OursRow(Row):
    """The bare stream's row (median round, GB/s) plus where the coordinator's time and memory went."""

    collect_seconds: tuple[float, ...]
    aggregate_seconds: tuple[float, ...]
    peak_rss_bytes: int
    coordinator_cpu_seconds: float  # median over the timed rounds
    participants_cpu_seconds: float  # all participants together, median over the timed rounds
    peak_collect_rss: tuple[int, int, int]  # sampled (total, anonymous, file-backed) bytes
    peak_aggregate_rss: tuple[int, int, int]


# ---------------------------------------------------------------------------------------- synthetic state


def synthetic_state(params: int, seed: int = 0):
    """~`params` fp32 values in TENSORS tensors: per layer a (1024, k) weight and a 1024 bias."""
    import torch

    layers = TENSORS // 2
    rows = 1024
    cols = max(1, round((params / layers - rows) / rows))
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for layer in range(layers):
        state[f"layers.{layer:03d}.weight"] = torch.randn(rows, cols, generator=gen)
        state[f"layers.{layer:03d}.bias"] = torch.randn(rows, generator=gen)
    return state


def write_model(params: int, path: Path) -> tuple[int, int]:
    """Encode the synthetic state once (in a throwaway process); returns (numel, payload bytes)."""
    from zk0.tensors import write_state_atomic

    state = synthetic_state(params)
    write_state_atomic(path, state)
    return sum(t.numel() for t in state.values()), path.stat().st_size


# ---------------------------------------------------------------------------------------- /proc


def _status_fields(fields: Sequence[str]) -> dict[str, int]:
    """Fields of /proc/self/status in kiB."""
    found = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in fields:
                found[key] = int(value.split()[0])
    return found


def _status_kib(field: str) -> int:
    return _status_fields((field,))[field]


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class RssSampler(threading.Thread):
    """Samples this process's RSS (anonymous, file-backed) every `interval` seconds, so that peaks can be
    attributed to a round's phase (VmHWM only gives the lifetime peak)."""

    def __init__(self, interval: float = 0.02) -> None:
        super().__init__(name="rss-sampler", daemon=True)
        self.interval = interval
        self.samples: list[tuple[float, int, int]] = []  # (time, anonymous bytes, file-backed bytes)
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.interval):
            fields = _status_fields(("RssAnon", "RssFile"))
            self.samples.append((time.monotonic(), fields["RssAnon"] * 1024, fields["RssFile"] * 1024))

    def peak(self, start: float, end: float) -> tuple[int, int, int]:
        """Peak RSS between two instants, with its anonymous and file-backed parts at that sample."""
        return max(((a + f, a, f) for t, a, f in self.samples if start <= t <= end), default=(0, 0, 0))


# ---------------------------------------------------------------------------------------- coordinator


def _coordinator_main(model_path: str, run_dir: str, setup: dict, out) -> None:
    """The coordinator process: our real server pieces around a synthetic global model."""
    try:
        out.put(("done", _serve_rounds(model_path, run_dir, out=out, **setup)))
    except BaseException as e:  # noqa: BLE001 - reported to the parent, which raises it
        import traceback

        out.put(("error", f"{type(e).__name__}: {e}\n{traceback.format_exc()}"))


def _trace_phases(events: list) -> None:
    """Time the coordinator's phases per upload and per aggregation (bench instrumentation, --trace)."""
    import functools

    import coordinator.rounds as rounds

    def timed(owner, name: str, label: str) -> None:
        original = getattr(owner, name)

        @functools.wraps(original)
        def wrapper(*args, **kwargs):
            start = time.monotonic()
            try:
                return original(*args, **kwargs)
            finally:
                events.append((label, threading.current_thread().name, start, time.monotonic()))

        setattr(owner, name, wrapper)

    timed(rounds, "validate_tensors", "validate")
    timed(rounds.FileAssembler, "finish", "fsync+rename")
    timed(rounds.Coordinator, "receive_update", "upload")
    timed(rounds.Coordinator, "_aggregate", "aggregate")
    timed(rounds.RunStore, "write_global", "write global")
    timed(rounds.ModelFile, "__init__", "read+hash global")


def _serve_rounds(
    model_path: str,
    run_dir: str,
    *,
    participants: int,
    rounds: int,
    chunk_kib: int,
    workers: int,
    trace: bool,
    out,
) -> dict:
    from concurrent import futures

    import grpc

    from coordinator import strategies
    from coordinator.rounds import Coordinator, RoundState
    from coordinator.service import FederationService
    from coordinator.store import RunStore
    from zk0.config import config_to_toml, load_config
    from zk0.records import RoundEntry
    from zk0.spool import SpoolReader
    from zk0.transport import GRPC_OPTIONS
    from zk0.v1 import federation_pb2_grpc as pb_grpc

    logging.basicConfig(level=logging.WARNING, format="coordinator: %(levelname)s %(name)s: %(message)s")
    sampler = RssSampler()
    sampler.start()
    events: list = []
    if trace:
        _trace_phases(events)
    config = load_config(
        None,
        [
            f"federation.rounds={rounds}",
            f"federation.min_participants={participants}",
            f"federation.min_updates={participants}",
            "federation.fraction=1.0",
            f"federation.chunk_kib={chunk_kib}",
            "federation.lease_s=600.0",
            "federation.round_timeout_s=600.0",
            "federation.join_timeout_s=300.0",
            "federation.on_join_timeout='stop'",
        ],
    )
    store, _ = RunStore.open(Path(run_dir), config)
    with SpoolReader(Path(model_path)) as reader:
        manifest = reader.manifest()
    coordinator = Coordinator(config, store, manifest, strategies.make(config))
    data = Path(model_path).read_bytes()
    coordinator.set_global(0, data, store.save_global(0, data))
    del data
    service = FederationService(
        coordinator, tokens=None, config_toml=config_to_toml(config), frozen_sha256="0" * 64
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers), options=GRPC_OPTIONS)
    pb_grpc.add_FederationServicer_to_server(service, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    out.put(("port", port))

    done: list[dict] = []

    cpu_mark = [_cpu_seconds()]

    def on_round(round_idx: int, state: RoundState, entry: RoundEntry) -> None:
        end = coordinator.clock()
        collected = state.started + entry.seconds.train
        cpu = _cpu_seconds()
        cpu_mark.append(cpu)
        done.append(
            {
                "round": round_idx,
                "at": (state.started, collected, end),
                "round_s": end - state.started,
                "collect_s": entry.seconds.train,
                "aggregate_s": entry.seconds.aggregate,
                "bytes": entry.bytes.to_json(),
                "rss_collect": sampler.peak(state.started, collected),
                "rss_aggregate": sampler.peak(collected, end),
                "cpu_s": cpu - cpu_mark[-2],  # since the previous round's end: one whole round
            }
        )
        # A bench artifact, outside the timed span: keep the disk bounded (the server keeps every round).
        shutil.rmtree(store.round_dir(round_idx), ignore_errors=True)
        store.model_path(round_idx - 1).unlink(missing_ok=True)

    stop = threading.Event()
    try:
        if "on_failed_attempt" in inspect.signature(coordinator.run).parameters:
            coordinator.run(stop, on_round, on_failed_attempt=lambda round_idx, entry: None)
        else:
            coordinator.run(stop, on_round)
        coordinator.wait_until_told(60)
    finally:
        server.stop(grace=2.0).wait()
        sampler.stopped.set()
    return {
        "rounds": done,
        "payload_bytes": coordinator.global_size,
        "hwm": _status_kib("VmHWM") * 1024,
        "samples": sampler.samples,
        "events": events,
    }


# ---------------------------------------------------------------------------------------- participants


def _participant_main(port: int, name: str, sample_count: int, cpu_out) -> None:
    """A raw stub client: join, then poll for tasks; per round pull the model, verify it, send it back."""
    import grpc

    from zk0.config import load_config_text
    from zk0.transfer import ChunkAssembler
    from zk0.transport import GRPC_OPTIONS
    from zk0.v1 import federation_pb2 as pb
    from zk0.v1 import federation_pb2_grpc as pb_grpc

    with grpc.insecure_channel(f"127.0.0.1:{port}", options=GRPC_OPTIONS) as channel:
        grpc.channel_ready_future(channel).result(timeout=60)
        stub = pb_grpc.FederationStub(channel)
        joined = stub.Join(
            pb.JoinRequest(
                participant_name=name,
                dataset=pb.DatasetDescription(
                    repo_id="bench/synthetic",
                    features=[pb.FeatureSpec(name="observation.state", dtype="float32", shape=[6])],
                    episodes=1,
                    frames=1,
                    fps=30.0,
                ),
            ),
            timeout=30,
        )
        # Upload chunks as the real client sizes them: from the run's config the coordinator sends at join.
        config = load_config_text(joined.config_toml, "the coordinator's config")
        session = joined.session_id  # every call after Join carries it
        chunk_bytes = config.federation.chunk_kib * 1024
        cpu = [_cpu_seconds()]
        while True:
            reply = stub.GetTask(pb.GetTaskRequest(participant_id=name, session_id=session), timeout=30)
            kind = reply.WhichOneof("task")
            if kind == "done":
                cpu_out.put([b - a for a, b in zip(cpu, cpu[1:], strict=False)])  # CPU seconds per round
                return
            if kind == "wait":
                time.sleep(reply.wait.seconds)
                continue
            task = reply.train
            assembler = ChunkAssembler(task.model_size, task.model_version, task.model_size)
            request = pb.DownloadModelRequest(
                participant_id=name, version=task.model_version, session_id=session
            )
            for message in stub.DownloadModel(request, timeout=600):
                if message.HasField("info"):
                    if message.info.size != task.model_size or message.info.version != task.model_version:
                        raise RuntimeError(f"{name}: model info does not match the task")
                else:
                    assembler.add(message.chunk.offset, message.chunk.data)
            payload = assembler.finish()
            header = pb.UpdateHeader(
                participant_id=name,
                round=task.round,
                base_version=task.model_version,
                sample_count=sample_count,
                metrics={"policy_loss": 0.0},
                size=len(payload),
                sha256=task.model_version,  # the bytes go back unchanged, verified on the way in
                session_id=session,
            )
            answer = stub.UploadUpdate(_upload_messages(header, payload, chunk_bytes), timeout=600)
            if not answer.accepted:
                raise RuntimeError(f"{name}: round {task.round} upload refused: {answer.reason}")
            cpu.append(_cpu_seconds())
            del payload, assembler


def _upload_messages(header, payload: bytes, chunk_bytes: int) -> Iterator:
    """Header, then the payload in chunks: what participant/client.py sends."""
    from zk0.transfer import iter_chunks
    from zk0.v1 import federation_pb2 as pb

    yield pb.UploadUpdateRequest(header=header)
    for offset, view in iter_chunks(payload, chunk_bytes):
        yield pb.UploadUpdateRequest(chunk=pb.Chunk(offset=offset, data=bytes(view)))


def run_ours(
    model_path: Path,
    participants: int,
    rounds: int,
    chunk_kib: int,
    workers: int,
    trace: Path | None = None,
) -> OursRow:
    """One coordinator process and P participant processes for `rounds` timed rounds after one warm-up."""
    ctx = mp.get_context("spawn")
    out, cpu_out = ctx.Queue(), ctx.Queue()
    run_dir = tempfile.mkdtemp(prefix=f"zk0-bench-p{participants}-", dir=model_path.parent)
    setup = {
        "participants": participants,
        "rounds": 1 + rounds,
        "chunk_kib": chunk_kib,
        "workers": workers,
        "trace": trace is not None,
    }
    coordinator = ctx.Process(target=_coordinator_main, args=(str(model_path), run_dir, setup, out))
    coordinator.start()
    procs: list[mp.Process] = []
    try:
        kind, port = out.get(timeout=300)
        if kind != "port":
            raise RuntimeError(f"coordinator failed to start:\n{port}")
        procs = [
            ctx.Process(target=_participant_main, args=(port, f"p{i}", 100 + 7 * i, cpu_out), daemon=True)
            for i in range(participants)
        ]
        for proc in procs:
            proc.start()
        kind, result = out.get(timeout=600 + 120 * (1 + rounds) * participants)
        if kind != "done":
            raise RuntimeError(f"coordinator failed:\n{result}")
        per_participant = [cpu_out.get(timeout=120) for _ in procs]
    finally:
        for proc in [*procs, coordinator]:
            proc.join(timeout=60)
            if proc.is_alive():
                proc.kill()
        shutil.rmtree(run_dir, ignore_errors=True)
    failed = [proc.exitcode for proc in procs if proc.exitcode != 0]
    if failed:
        raise RuntimeError(f"participant processes failed with exit codes {failed}")
    if trace is not None:
        write_trace(trace / f"coordinator-p{participants}.txt", result)
    timed = result["rounds"][1:]  # the first round is the warm-up
    participants_cpu = [sum(per_round) for per_round in zip(*per_participant, strict=True)]
    return OursRow(
        participants=participants,
        payload_bytes=result["payload_bytes"],
        round_seconds=tuple(r["round_s"] for r in timed),
        collect_seconds=tuple(r["collect_s"] for r in timed),
        aggregate_seconds=tuple(r["aggregate_s"] for r in timed),
        peak_rss_bytes=result["hwm"],
        coordinator_cpu_seconds=statistics.median(r["cpu_s"] for r in timed),
        participants_cpu_seconds=statistics.median(participants_cpu[1:]),
        peak_collect_rss=max(tuple(r["rss_collect"]) for r in timed),
        peak_aggregate_rss=max(tuple(r["rss_aggregate"]) for r in timed),
    )


def write_trace(path: Path, result: dict) -> None:
    """Per round, its phases and the coordinator's timed steps, then its RSS every 20 ms."""
    path.parent.mkdir(parents=True, exist_ok=True)
    t0 = result["samples"][0][0] if result["samples"] else 0.0
    with open(path, "w") as f:
        for r in result["rounds"]:
            start, collected, end = r["at"]
            f.write(
                f"round {r['round']}: collect {collected - start:.2f} s, "
                f"aggregate+save {end - collected:.2f} s\n"
            )
            for label, thread, a, b in sorted(result["events"], key=lambda e: e[2]):
                if start <= a <= end:
                    f.write(
                        f"  {a - start:7.2f} .. {b - start:7.2f} ({b - a:5.2f} s)  {label:16} {thread}"
                        f"  [{a - t0:.2f} .. {b - t0:.2f} on the RSS clock]\n"
                    )
        f.write("# seconds anon_MB file_MB\n")
        for t, anon, file in result["samples"]:
            f.write(f"{t - t0:.2f} {anon / 1e6:.0f} {file / 1e6:.0f}\n")


# ---------------------------------------------------------------------------------------- the ceiling


def _bare_main(payload_bytes: int, chunk_bytes: int, max_workers: int, requests, out) -> None:
    """The bare stream's server, in a process of its own so that it runs under the same malloc settings;
    it runs batches of rounds (each with fresh participant processes) on request."""
    try:
        from bench.bare_grpc_stream import run_rounds, start_server

        server, port = start_server(os.urandom(payload_bytes), chunk_bytes, max_workers)
        out.put(("ready", port))
        while (request := requests.get()) is not None:
            participants, rounds = request
            cpu = _cpu_seconds()
            seconds = run_rounds(port, participants, chunk_bytes, rounds)
            out.put(("rounds", (seconds, (_cpu_seconds() - cpu) / rounds)))
        server.stop(grace=None)
        out.put(("done", _status_kib("VmHWM") * 1024))
    except BaseException as e:  # noqa: BLE001 - reported to the parent, which raises it
        out.put(("error", f"{type(e).__name__}: {e}"))


class BareStream:
    """bench.bare_grpc_stream's server and rounds, moving `payload_bytes` per participant each way."""

    def __init__(self, payload_bytes: int, chunk_bytes: int, max_workers: int) -> None:
        ctx = mp.get_context("spawn")
        self.requests, self.out = ctx.Queue(), ctx.Queue()
        self.proc = ctx.Process(
            target=_bare_main, args=(payload_bytes, chunk_bytes, max_workers, self.requests, self.out)
        )
        self.proc.start()
        self._answer("ready", 300)

    def _answer(self, expected: str, timeout: float):
        kind, value = self.out.get(timeout=timeout)
        if kind != expected:
            raise RuntimeError(f"bare stream failed: {value}")
        return value

    def rounds(self, participants: int, rounds: int, warmup: int = 1) -> tuple[list[float], float]:
        """Seconds of each round after `warmup` untimed ones, and the server's CPU seconds per round."""
        self.requests.put((participants, warmup + rounds))
        seconds, cpu = self._answer("rounds", 300 + 120 * (warmup + rounds))
        return seconds[warmup:], cpu

    def close(self) -> int:
        """Stop the server; returns its process's peak RSS in bytes."""
        try:
            self.requests.put(None)
            return self._answer("done", 60)
        finally:
            self.proc.join(timeout=60)
            if self.proc.is_alive():
                self.proc.kill()


# ---------------------------------------------------------------------------------------- main


def rss_target_bytes(payload_bytes: int) -> int:
    return int(2.5 * payload_bytes + 0.5e9)


def format_table(rows: Sequence[tuple[OursRow, Row]]) -> str:
    header = (
        f"{'P':>3} {'ours s':>7} {'bare s':>7} {'ratio':>6} {'ours GB/s':>9} {'bare GB/s':>9} "
        f"{'coord peak RSS MB':>17} {'RSS target MB':>13}"
    )
    lines = [header]
    for ours, bare in rows:
        lines.append(
            f"{ours.participants:>3} {ours.median_seconds:>7.2f} {bare.median_seconds:>7.2f} "
            f"{ours.median_seconds / bare.median_seconds:>6.2f} {ours.gb_per_second:>9.2f} "
            f"{bare.gb_per_second:>9.2f} {ours.peak_rss_bytes / 1e6:>17.0f} "
            f"{rss_target_bytes(ours.payload_bytes) / 1e6:>13.0f}"
        )
    return "\n".join(lines)


def _seconds(values: Sequence[float]) -> str:
    return " ".join(f"{s:.2f}" for s in values)


def _rss(peak: tuple[int, int, int]) -> str:
    total, anon, file = (value / 1e6 for value in peak)
    return f"{total:.0f} MB = {anon:.0f} anon + {file:.0f} file"


def format_details(ours: OursRow, bare: Row | None, bare_cpu: float) -> str:
    line = (
        f"P={ours.participants}: ours rounds {_seconds(ours.round_seconds)} s "
        f"(collect {_seconds(ours.collect_seconds)}, aggregate+save {_seconds(ours.aggregate_seconds)}); "
        f"CPU s/round: coordinator {ours.coordinator_cpu_seconds:.1f}, "
        f"participants {ours.participants_cpu_seconds:.1f}; "
        f"coordinator peak RSS {ours.peak_rss_bytes / 1e6:.0f} MB "
        f"(sampled: collect {_rss(ours.peak_collect_rss)}, aggregate {_rss(ours.peak_aggregate_rss)})"
    )
    if bare is not None:
        line += f"; bare rounds {_seconds(bare.round_seconds)} s, bare server CPU s/round {bare_cpu:.1f}"
    return line


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=int, default=100_000_000, help="fp32 parameters in the model")
    parser.add_argument("--participants", default="2,4,8", help="comma-separated participant counts")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds per P (after one warm-up round)")
    parser.add_argument("--chunk-kib", type=int, default=4096, help="federation.chunk_kib (both benches)")
    parser.add_argument("--workers", type=int, default=16, help="coordinator server threads (its default)")
    parser.add_argument(
        "--malloc",
        default=",".join(f"{k}={v}" for k, v in MALLOC_ENV.items()),
        help="KEY=VALUE,... set for every bench process, or 'none' for glibc's defaults",
    )
    parser.add_argument(
        "--trace", type=Path, help="folder for per-P timelines of the coordinator's phases and RSS"
    )
    parser.add_argument("--only-ours", action="store_true", help="skip the bare stream (no ratio)")
    args = parser.parse_args(argv)
    participants = [int(p) for p in args.participants.split(",")]
    for key in [k for k in os.environ if k.startswith("MALLOC_")]:
        del os.environ[key]
    settings = [] if args.malloc == "none" else [item.split("=", 1) for item in args.malloc.split(",")]
    for key, value in settings:
        os.environ[key] = value
    malloc = " ".join(f"{key}={value}" for key, value in settings) or "glibc malloc defaults"
    work = Path(tempfile.mkdtemp(prefix="zk0-bench-"))
    model = work / "initial.safetensors"
    chunk_bytes = args.chunk_kib * 1024
    bare_stream = None
    try:
        ctx = mp.get_context("spawn")
        with ctx.Pool(1) as pool:
            numel, size = pool.apply(write_model, (args.params, model))
        print(
            f"coordinator round vs bare grpcio stream: {numel:,} fp32 params in {TENSORS} tensors "
            f"({size / 1e6:.0f} MB), {args.chunk_kib} KiB chunks, "
            f"{args.rounds} timed rounds after 1 warm-up, "
            f"{os.cpu_count()} CPUs, {malloc}",
            flush=True,
        )
        if not args.only_ours:
            bare_stream = BareStream(size, chunk_bytes, max_workers=2 * max(participants) + 4)
        rows = []
        for count in participants:
            # The bare rounds bracket ours (half before, half after), so a load that comes and goes on a
            # shared machine weighs on both sides of the ratio alike.
            before, cpu_before = bare_stream.rounds(count, args.rounds) if bare_stream else ([], 0.0)
            ours = run_ours(model, count, args.rounds, args.chunk_kib, args.workers, args.trace)
            after, cpu_after = bare_stream.rounds(count, args.rounds) if bare_stream else ([], 0.0)
            bare = Row(count, size, tuple(before + after)) if bare_stream else None
            print(format_details(ours, bare, (cpu_before + cpu_after) / 2), flush=True)
            if bare is not None:
                rows.append((ours, bare))
        if bare_stream is not None:
            print(f"bare stream server peak RSS {bare_stream.close() / 1e6:.0f} MB")
            bare_stream = None
            print(format_table(rows))
    finally:
        if bare_stream is not None:
            bare_stream.close()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
