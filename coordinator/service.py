"""The gRPC servicer: authenticates each call, translates messages to and from the round state machine."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import grpc

from coordinator.intake import StorageError
from coordinator.membership import DatasetMismatch, JoinsExhausted, SessionConflict
from coordinator.rounds import Coordinator, TaskKind
from zk0.errors import Zk0Error
from zk0.transport import TOKEN_METADATA_KEY, TOKEN_PREFIX
from zk0.v1 import federation_pb2 as pb
from zk0.v1 import federation_pb2_grpc as pb_grpc
from zk0.validation import Refusal, UpdateHeader, UpdateRejected

log = logging.getLogger(__name__)


def read_tokens(path: Path) -> dict[str, str]:
    """A tokens file: one `NAME TOKEN` per line, '#' comments; returns token -> participant name."""
    tokens: dict[str, str] = {}
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as e:
        raise Zk0Error(f"cannot read tokens file {path}: {e.strerror}") from e
    for number, line in enumerate(lines, 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) != 2:
            raise Zk0Error(f"tokens file {path}, line {number}: expected 'NAME TOKEN'")
        name, token = parts
        if len(token) < 16:
            raise Zk0Error(
                f"tokens file {path}, line {number}: token for {name} is shorter than 16 characters"
            )
        if token in tokens:
            raise Zk0Error(f"tokens file {path}, line {number}: token reused (already {tokens[token]}'s)")
        tokens[token] = name
    if not tokens:
        raise Zk0Error(f"tokens file {path} holds no tokens")
    return tokens


class FederationService(pb_grpc.FederationServicer):
    def __init__(
        self,
        coordinator: Coordinator,
        *,
        tokens: dict[str, str] | None,
        config_toml: str,
        frozen_sha256: str,
        normalization_json: str = "",
        require_cert_name: bool = False,
    ) -> None:
        self.coordinator = coordinator
        self.tokens = tokens
        self.require_cert_name = require_cert_name
        self.config_toml = config_toml
        self.frozen_sha256 = frozen_sha256
        self.normalization_json = normalization_json

    def _authorize(self, context: grpc.ServicerContext, name: str | None) -> None:
        """With a tokens file, the call's token must exist and belong to the participant it claims to be
        (`name` None: any participant's); under mutual TLS the certificate's common name must be the name."""
        if self.require_cert_name and name is not None:
            names = [cn.decode() for cn in context.auth_context().get("x509_common_name", [])]
            if name not in names:
                context.abort(
                    grpc.StatusCode.PERMISSION_DENIED, f"your certificate is not participant {name}'s"
                )
        if self.tokens is None:
            return
        value = dict(context.invocation_metadata()).get(TOKEN_METADATA_KEY, "")
        if not value.startswith(TOKEN_PREFIX):
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "no token: pass --token")
        owner = self.tokens.get(value.removeprefix(TOKEN_PREFIX))
        if owner is None:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "unknown token")
        if name is not None and owner != name:
            context.abort(grpc.StatusCode.PERMISSION_DENIED, f"this token belongs to participant {owner}")

    def _registered(self, context: grpc.ServicerContext, name: str, session: str) -> None:
        """Every call after Join carries the session it issued; a stale or missing one must join again."""
        if not self.coordinator.holds_session(name, session):
            context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"participant {name} has no live session {'' if session else '(none sent) '}here: join",
            )

    def Join(self, request: pb.JoinRequest, context: grpc.ServicerContext) -> pb.JoinResponse:
        name = request.participant_name
        self._authorize(context, name)
        d = request.dataset
        dataset = {
            "repo_id": d.repo_id,
            "episodes": d.episodes,
            "frames": d.frames,
            "fps": d.fps,
            "features": {f.name: {"dtype": f.dtype, "shape": list(f.shape)} for f in d.features},
        }
        try:
            member = self.coordinator.join(name, dataset, request.session_id)
        except SessionConflict as e:
            context.abort(grpc.StatusCode.ALREADY_EXISTS, str(e))
        except JoinsExhausted as e:
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(e))
        except DatasetMismatch as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        except Zk0Error as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        return pb.JoinResponse(
            lease_seconds=self.coordinator.fed.lease_s,
            run_id=self.coordinator.run_id,
            config_toml=self.config_toml,
            frozen_sha256=self.frozen_sha256,
            normalization_json=self.normalization_json,
            session_id=member.session,
        )

    def Heartbeat(self, request: pb.HeartbeatRequest, context: grpc.ServicerContext) -> pb.HeartbeatResponse:
        self._authorize(context, request.participant_id)
        registered = self.coordinator.heartbeat(request.participant_id, request.session_id)
        return pb.HeartbeatResponse(run_active=not self.coordinator.done, registered=registered)

    def GetTask(self, request: pb.GetTaskRequest, context: grpc.ServicerContext) -> pb.GetTaskResponse:
        name = request.participant_id
        self._authorize(context, name)
        if not self.coordinator.done:
            self._registered(context, name, request.session_id)
        task = self.coordinator.task_for(name)
        if task.kind is TaskKind.DONE:
            return pb.GetTaskResponse(done=pb.Done(reason=task.reason))
        if task.kind is TaskKind.WAIT:
            return pb.GetTaskResponse(wait=pb.Wait(seconds=task.wait_s, reason=task.reason))
        return pb.GetTaskResponse(
            train=pb.TrainTask(
                round=task.round,
                model_version=task.version,
                model_size=task.size,
                manifest=task.manifest.to_proto(),
                hyperparameters=pb.Hyperparameters(
                    local_steps=task.steps, lr=task.lr, mu=task.mu, seed=task.seed
                ),
                deadline_seconds=task.deadline_s,
            )
        )

    def DownloadModel(
        self, request: pb.DownloadModelRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.DownloadModelResponse]:
        name = request.participant_id
        self._authorize(context, name)
        self._registered(context, name, request.session_id)
        try:
            model = self.coordinator.model_file(request.version)
        except KeyError:
            context.abort(
                grpc.StatusCode.NOT_FOUND, f"version {request.version[:12]} is not the global model"
            )
        size = model.size
        if not 0 <= request.offset <= size:
            context.abort(grpc.StatusCode.OUT_OF_RANGE, f"offset {request.offset} outside {size} bytes")
        yield pb.DownloadModelResponse(info=pb.ModelInfo(version=request.version, size=size))
        for message, length in model.chunks(request.offset):  # read from the model's file
            yield message
            self.coordinator.count_download(name, length)

    def UploadUpdate(
        self, request_iterator: Iterator[pb.UploadUpdateRequest], context: grpc.ServicerContext
    ) -> pb.UploadUpdateResponse:
        self._authorize(context, None)  # before reading anything from an unknown caller
        first = next(request_iterator, None)
        if first is None or not first.HasField("header"):
            return _refused(Refusal.BAD_HEADER, "the first message of an upload must be its header")
        header = UpdateHeader.from_proto(first.header)
        self._authorize(context, header.participant_id)
        self._registered(context, header.participant_id, header.session_id)

        def chunks() -> Iterator[tuple[int, bytes]]:
            for message in request_iterator:
                if not message.HasField("chunk"):
                    raise UpdateRejected(Refusal.BAD_HEADER, "a second header in one upload")
                yield message.chunk.offset, message.chunk.data

        try:
            self.coordinator.receive_update(header, chunks())
        except UpdateRejected as e:
            return _refused(e.refusal, e.reason)
        except StorageError as e:  # logged where it happened; the participant retries UNAVAILABLE
            context.abort(grpc.StatusCode.UNAVAILABLE, str(e))
        return pb.UploadUpdateResponse(accepted=True)

    def ReportEvaluation(
        self, request: pb.ReportEvaluationRequest, context: grpc.ServicerContext
    ) -> pb.ReportEvaluationResponse:
        self._authorize(context, request.participant_id)
        self._registered(context, request.participant_id, request.session_id)
        problem = self.coordinator.record_evaluation(
            request.participant_id, request.round, request.version, dict(request.metrics)
        )
        return pb.ReportEvaluationResponse(recorded=not problem, reason=problem)

    def Leave(self, request: pb.LeaveRequest, context: grpc.ServicerContext) -> pb.LeaveResponse:
        self._authorize(context, request.participant_id)
        left = self.coordinator.leave(
            request.participant_id, request.session_id, " ".join(request.reason.split())[:200]
        )
        return pb.LeaveResponse(left=left)


def _refused(refusal: Refusal, reason: str) -> pb.UploadUpdateResponse:
    return pb.UploadUpdateResponse(accepted=False, refusal=refusal.to_proto(), reason=reason)
