"""The participant: joins the coordinator, then loops ask-task / pull model / evaluate / train / upload.

The model and dataset are built once per process (from the run's config, which the coordinator sends at
join). Every RPC goes through `_call`, which reconnects with backoff while the coordinator is unreachable
and re-joins when the coordinator no longer knows us (its lease lapsed, or it restarted).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from participant.connection import diagnose, parse_address
from participant.runtime import ParticipantRuntime, description
from zk0.config import load_config_text
from zk0.data import Source, check_spec, open_source
from zk0.errors import Zk0Error
from zk0.interrupts import STOP, Interrupted, check
from zk0.normalization import stats_from_json
from zk0.payload import PayloadRejected, sha256_hex
from zk0.policy import load_trainable_state, resolve_device, trainable_state
from zk0.tensors import Manifest, decode_state, encode_state
from zk0.training.lightning_module import RoundPlan
from zk0.training.local_training import DeadlinePassed, RoundResult
from zk0.transfer import ChunkAssembler, iter_chunks
from zk0.transport import GRPC_OPTIONS, channel_credentials, is_loopback, token_metadata
from zk0.v1 import federation_pb2 as pb
from zk0.v1 import federation_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED)
# A transfer refused because the coordinator is at federation.max_transfers: retried like a busy join.
BUSY = (grpc.StatusCode.RESOURCE_EXHAUSTED,)
DOWNLOAD_ATTEMPTS = 5
# gRPC backs off reconnecting up to 120 s by default, failing calls fast meanwhile: a restarted coordinator
# would go unnoticed for minutes (past its join timeout). Our own retry loop paces the attempts.
RECONNECT_OPTIONS = [
    *GRPC_OPTIONS,
    ("grpc.initial_reconnect_backoff_ms", 500),
    ("grpc.min_reconnect_backoff_ms", 500),
    ("grpc.max_reconnect_backoff_ms", 5000),
]
LEAVE_TIMEOUT_S = 3.0  # a stopping participant says so, but never waits long on a coordinator that is gone


@dataclass
class ClientOptions:
    coordinator: str
    dataset: str
    name: str
    token: str | None = None
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    insecure: bool = False
    device: str = "auto"
    give_up_s: float = 600.0
    progress: bool = True
    rename: dict[str, str] = field(default_factory=dict)  # --rename: the dataset's names -> the run's


class NotRegistered(Exception):
    """The coordinator does not know us (any more): join again."""


class ParticipantClient:
    """`stop` (default: this process's SIGINT/SIGTERM flag) ends the participant promptly from any thread:
    between RPCs, in backoff waits and at the next training batch, by raising `Interrupted`."""

    def __init__(
        self,
        options: ClientOptions,
        *,
        train_lock: threading.Lock | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        self.options = options
        self.train_lock = train_lock
        self.interrupt = stop if stop is not None else STOP
        self.connected = False  # reached the coordinator at least once
        self.metadata = token_metadata(options.token)
        self.channel = self._channel()
        self.stub = pb_grpc.FederationStub(self.channel)
        self.runtime: ParticipantRuntime | None = None
        self.checked: Source | None = None  # the dataset as checked before the first join
        self.lease_s = 10.0
        self.session = ""  # issued by the coordinator at join; every later call carries it
        self.stopped = threading.Event()
        self.need_join = threading.Event()
        self.joined = threading.Event()
        self.rounds_done = 0

    def _channel(self) -> grpc.Channel:
        o = self.options
        host, _port = parse_address(o.coordinator)
        if o.insecure:
            if o.tls_ca or o.tls_cert or o.tls_key:
                raise Zk0Error("--insecure contradicts --tls-ca/--tls-cert/--tls-key (TLS would be ignored)")
            if not is_loopback(host):
                raise Zk0Error(f"--insecure only reaches a loopback coordinator, not {host}; use TLS")
            return grpc.insecure_channel(o.coordinator, options=RECONNECT_OPTIONS)
        creds = channel_credentials(o.tls_ca, o.tls_cert, o.tls_key)
        return grpc.secure_channel(o.coordinator, creds, options=RECONNECT_OPTIONS)

    # ------------------------------------------------------------------ plumbing

    def _call(self, fn: Callable[[], Any], what: str, retry: tuple[grpc.StatusCode, ...] = ()) -> Any:
        """Run one RPC, retrying with backoff while the coordinator is unreachable (or answers one of
        `retry`, e.g. a join refused as RESOURCE_EXHAUSTED while joins are rate-limited). A connection
        failure that waiting cannot fix (participant/connection.py) stops at once, saying what failed."""
        delay, started, attempt = 0.5, time.monotonic(), 0
        address = self.options.coordinator
        while True:
            check(self.interrupt)
            try:
                reply = fn()
                self.connected = True
                return reply
            except grpc.RpcError as e:
                code = e.code()
                check(self.interrupt)  # a stopping process's calls fail: that is not the coordinator's fault
                if code == grpc.StatusCode.UNAVAILABLE:
                    failure = diagnose(e, insecure=self.options.insecure, ever_connected=self.connected)
                    if not failure.retry:
                        raise Zk0Error(f"cannot reach coordinator {address}: {failure.cause}") from e
                    why = f"coordinator {address} unreachable ({failure.cause})"
                elif code in RETRYABLE:
                    why = f"coordinator {address} unreachable ({code.name})"
                else:
                    why = f"coordinator {address} busy ({code.name}: {e.details()})"
                if (code in RETRYABLE or code in retry) and not self.stopped.is_set():
                    waited = time.monotonic() - started
                    if waited > self.options.give_up_s:
                        raise Zk0Error(f"{why} for {waited:.0f}s ({what})") from e
                    attempt += 1
                    limit = (
                        f", giving up after {self.options.give_up_s:g}s (--give-up-after)"
                        if attempt == 1
                        else ""
                    )
                    log.warning("%s: %s; retrying in %.1fs%s", what, why, delay, limit)
                    self.interrupt.wait(delay)
                    delay = min(delay * 2, 10.0)
                    continue
                if code == grpc.StatusCode.FAILED_PRECONDITION:
                    raise NotRegistered(e.details()) from e
                if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
                    raise Zk0Error(f"coordinator refused us: {e.details()}") from e
                raise Zk0Error(f"{what} failed: {code.name}: {e.details()}") from e

    def _heartbeats(self) -> None:
        while not self.stopped.wait(self.lease_s / 3):
            if not self.joined.is_set() or self.interrupt.is_set():
                continue
            try:
                reply = self.stub.Heartbeat(
                    pb.HeartbeatRequest(participant_id=self.options.name, session_id=self.session),
                    metadata=self.metadata,
                    timeout=10,
                )
            except grpc.RpcError as e:
                log.debug("heartbeat failed: %s", e.code().name)
                continue
            if not reply.registered and reply.run_active:
                self.need_join.set()

    # ------------------------------------------------------------------ the protocol

    def join(self) -> None:
        o = self.options
        source = self.runtime.source if self.runtime else self.checked
        reply = self._call(
            lambda: self.stub.Join(
                pb.JoinRequest(
                    participant_name=o.name, dataset=description(source, o.dataset), session_id=self.session
                ),
                metadata=self.metadata,
                timeout=30,
            ),
            "join",
            retry=(grpc.StatusCode.RESOURCE_EXHAUSTED,),
        )
        self.lease_s = reply.lease_seconds
        self.session = reply.session_id
        self.joined.set()
        if self.runtime is None:
            config = load_config_text(reply.config_toml, f"the config sent by {o.coordinator}")
            source = open_source(o.dataset, config, o.rename)
            device = resolve_device(o.device)
            shared = stats_from_json(reply.normalization_json) if reply.normalization_json else None
            log.info("%s: building the policy and datasets for %s on %s", o.name, o.dataset, device)
            with self.train_lock or nullcontext():  # one device, and one global RNG seeding the backbone
                check(self.interrupt)
                self.runtime = ParticipantRuntime(config, source, device, o.progress, shared, self.interrupt)
            if self.runtime.fingerprint != reply.frozen_sha256:
                raise Zk0Error(
                    "this participant's frozen backbone differs from the coordinator's (fingerprint "
                    f"{self.runtime.fingerprint[:12]} != {reply.frozen_sha256[:12]}): same model.source, "
                    "lerobot and torch versions are required"
                )
            self.join()  # now with the dataset's full description
            return
        self.need_join.clear()
        log.info("%s joined run %s (lease %.0fs)", o.name, reply.run_id, self.lease_s)

    def run(self) -> int:
        """Take part until the coordinator says the run is done; returns the number of rounds trained."""
        # A bad dataset is the participant's to fix: say so before contacting anyone, not after joining.
        self.checked = check_spec(self.options.dataset, self.options.rename)
        beat = threading.Thread(
            target=self._heartbeats, name=f"zk0-heartbeat-{self.options.name}", daemon=True
        )
        beat.start()  # before the first join's model build, which can outlast a lease
        finished, why = False, "stopped"
        try:
            self.join()
            while True:
                if self.need_join.is_set():
                    self.join()
                try:
                    reply = self._call(
                        lambda: self.stub.GetTask(
                            pb.GetTaskRequest(participant_id=self.options.name, session_id=self.session),
                            metadata=self.metadata,
                            timeout=30,
                        ),
                        "get task",
                    )
                except NotRegistered:
                    self.join()
                    continue
                kind = reply.WhichOneof("task")
                if kind == "done":
                    finished = True
                    log.info(
                        "%s: run finished (%s) after %d rounds",
                        self.options.name,
                        reply.done.reason,
                        self.rounds_done,
                    )
                    return self.rounds_done
                if kind == "wait":
                    self.interrupt.wait(reply.wait.seconds)
                    continue
                try:
                    self.train_round(reply.train)
                except NotRegistered:
                    self.join()
        except BaseException as e:
            why = (
                "interrupted"
                if isinstance(e, (KeyboardInterrupt, Interrupted))
                else f"stopped by an error ({type(e).__name__})"
            )
            raise
        finally:
            self.shutdown(beat, None if finished else why)

    def shutdown(self, beat: threading.Thread, leave_reason: str | None) -> None:
        """In order: the heartbeat thread (joined, so no thread is inside a gRPC call at exit), our leave
        (when we stop before the run's end), then the channel (which cancels a heartbeat still waiting on an
        unresponsive coordinator)."""
        self.stopped.set()
        beat.join(timeout=15)
        if leave_reason is not None:
            self.leave(leave_reason)
        self.channel.close()
        beat.join()

    def leave(self, reason: str) -> None:
        """Tell the coordinator we stop, so it drops us from its round at once instead of waiting for our
        lease to lapse. Best effort: a coordinator that is gone or slow must not hold up stopping."""
        if not self.session:
            return
        request = pb.LeaveRequest(participant_id=self.options.name, session_id=self.session, reason=reason)
        try:
            self.stub.Leave(request, metadata=self.metadata, timeout=LEAVE_TIMEOUT_S)
        except grpc.RpcError as e:
            log.info("%s: could not tell the coordinator we leave (%s)", self.options.name, e.code().name)

    def download(self, task: pb.TrainTask) -> bytes:
        """Pull the round's model, resuming from the last byte received; a corrupt model is refused."""
        expected_max = task.model_size
        for attempt in range(1, DOWNLOAD_ATTEMPTS + 1):
            assembler = ChunkAssembler(task.model_size, task.model_version, expected_max)
            try:
                self._stream_into(assembler, task)
                return assembler.finish()
            except PayloadRejected as e:
                log.error(
                    "%s: refusing model %s: %s (attempt %d)",
                    self.options.name,
                    task.model_version[:12],
                    e.reason,
                    attempt,
                )
        raise Zk0Error(f"model {task.model_version[:12]} arrived corrupt {DOWNLOAD_ATTEMPTS} times")

    def _stream_into(self, assembler: ChunkAssembler, task: pb.TrainTask) -> None:
        delay = 0.5
        while True:
            request = pb.DownloadModelRequest(
                participant_id=self.options.name,
                version=task.model_version,
                offset=assembler.received,
                session_id=self.session,
            )
            try:
                for message in self.stub.DownloadModel(request, metadata=self.metadata, timeout=600):
                    if message.HasField("info"):
                        if message.info.size != task.model_size or message.info.version != task.model_version:
                            raise PayloadRejected("model info does not match the task")
                    else:
                        assembler.add(message.chunk.offset, message.chunk.data)
                return
            except grpc.RpcError as e:
                if e.code() == grpc.StatusCode.FAILED_PRECONDITION:
                    raise NotRegistered(e.details()) from e
                if e.code() not in RETRYABLE + BUSY:
                    raise Zk0Error(f"download failed: {e.code().name}: {e.details()}") from e
                check(self.interrupt)
                log.warning(
                    "download interrupted at byte %d (%s); resuming", assembler.received, e.code().name
                )
                self.interrupt.wait(delay)
                delay = min(delay * 2, 10.0)

    def train_round(self, task: pb.TrainTask) -> None:
        runtime = self.runtime
        name = self.options.name
        deadline = time.monotonic() + task.deadline_seconds if task.deadline_seconds > 0 else None
        expected = Manifest.from_proto(task.manifest)
        if runtime.manifest != expected:  # before pulling a model this policy could not load
            raise Zk0Error(f"model {task.model_version[:12]}'s tensors differ from this participant's policy")
        data = self.download(task)
        state = decode_state(data)
        if Manifest.of(state) != expected:
            raise Zk0Error(f"model {task.model_version[:12]} does not match its manifest")
        hp = task.hyperparameters
        with self.train_lock or nullcontext():
            check(self.interrupt)  # simulate's participants queue for the device: stop, do not train
            if deadline is not None and time.monotonic() >= deadline:
                log.warning("%s: round %d: its deadline passed before training could start", name, task.round)
                return
            load_trainable_state(runtime.bundle.policy, state)
            local_eval = runtime.evaluate()
            if local_eval is not None:
                self.report_evaluation(task, local_eval)
            log.info("%s: round %d, %d steps at lr %g, mu %g", name, task.round, hp.local_steps, hp.lr, hp.mu)
            try:
                result, payload = self.local_update(runtime, hp, deadline)
            except DeadlinePassed as e:
                log.warning(
                    "%s: round %d: %s; not uploading (raise federation.round_timeout_s or lower "
                    "train.local_steps)",
                    name,
                    task.round,
                    e,
                )
                return
        metrics = {**result.as_dict(), "mu": hp.mu, "lr": hp.lr}  # what we were sent, for the record
        header = pb.UpdateHeader(
            participant_id=name,
            round=task.round,
            base_version=task.model_version,
            sample_count=result.samples,
            metrics=metrics,
            size=len(payload),
            sha256=sha256_hex(payload),
            session_id=self.session,
        )
        reply = self._call(
            lambda: self.stub.UploadUpdate(
                self._upload_messages(header, payload), metadata=self.metadata, timeout=600
            ),
            "upload",
            retry=BUSY,
        )
        if reply.accepted:
            self.rounds_done += 1
            log.info(
                "%s: round %d update accepted: %d steps, loss %.4f, %.1fs",
                name,
                task.round,
                result.steps,
                result.policy_loss,
                result.seconds,
            )
        else:
            log.warning("%s: round %d update refused: %s", name, task.round, reply.reason)

    def local_update(
        self, runtime: ParticipantRuntime, hp: pb.Hyperparameters, deadline: float | None
    ) -> tuple[RoundResult, bytes]:
        """Train the loaded global model for one round, stopping at `deadline` (DeadlinePassed); (the result,
        the encoded update to upload)."""
        plan = RoundPlan(lr=hp.lr, mu=hp.mu, steps=hp.local_steps)
        result = runtime.trainer.train_round(plan, seed=hp.seed, deadline=deadline)
        return result, encode_state(trainable_state(runtime.bundle.policy))

    def report_evaluation(self, task: pb.TrainTask, metrics: dict[str, float]) -> None:
        """Send our evaluation of the round's model; one the coordinator does not count is logged with why."""
        request = pb.ReportEvaluationRequest(
            participant_id=self.options.name,
            round=task.round,
            version=task.model_version,
            metrics=metrics,
            session_id=self.session,
        )
        reply = self._call(
            lambda: self.stub.ReportEvaluation(request, metadata=self.metadata, timeout=30),
            "report evaluation",
        )
        if not reply.recorded:
            log.warning(
                "%s: round %d evaluation not recorded: %s", self.options.name, task.round, reply.reason
            )

    def _upload_messages(self, header: pb.UpdateHeader, payload: bytes) -> Iterator[pb.UploadUpdateRequest]:
        yield pb.UploadUpdateRequest(header=header)
        chunk_bytes = self.runtime.config.federation.chunk_kib * 1024
        for offset, view in iter_chunks(payload, chunk_bytes):
            yield pb.UploadUpdateRequest(chunk=pb.Chunk(offset=offset, data=bytes(view)))
