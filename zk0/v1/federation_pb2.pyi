from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Refusal(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REFUSAL_UNSPECIFIED: _ClassVar[Refusal]
    REFUSAL_WRONG_ROUND: _ClassVar[Refusal]
    REFUSAL_WRONG_BASE: _ClassVar[Refusal]
    REFUSAL_BAD_HEADER: _ClassVar[Refusal]
    REFUSAL_TOO_LARGE: _ClassVar[Refusal]
    REFUSAL_CORRUPT_PAYLOAD: _ClassVar[Refusal]
    REFUSAL_BAD_TENSORS: _ClassVar[Refusal]
    REFUSAL_NOT_IN_ROUND: _ClassVar[Refusal]
REFUSAL_UNSPECIFIED: Refusal
REFUSAL_WRONG_ROUND: Refusal
REFUSAL_WRONG_BASE: Refusal
REFUSAL_BAD_HEADER: Refusal
REFUSAL_TOO_LARGE: Refusal
REFUSAL_CORRUPT_PAYLOAD: Refusal
REFUSAL_BAD_TENSORS: Refusal
REFUSAL_NOT_IN_ROUND: Refusal

class TensorSpec(_message.Message):
    __slots__ = ("name", "dtype", "shape")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    name: str
    dtype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, name: _Optional[str] = ..., dtype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ...) -> None: ...

class TensorManifest(_message.Message):
    __slots__ = ("tensors",)
    TENSORS_FIELD_NUMBER: _ClassVar[int]
    tensors: _containers.RepeatedCompositeFieldContainer[TensorSpec]
    def __init__(self, tensors: _Optional[_Iterable[_Union[TensorSpec, _Mapping]]] = ...) -> None: ...

class Chunk(_message.Message):
    __slots__ = ("offset", "data")
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    offset: int
    data: bytes
    def __init__(self, offset: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class FeatureSpec(_message.Message):
    __slots__ = ("name", "dtype", "shape")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    name: str
    dtype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, name: _Optional[str] = ..., dtype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ...) -> None: ...

class DatasetDescription(_message.Message):
    __slots__ = ("repo_id", "features", "episodes", "frames", "fps")
    REPO_ID_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    EPISODES_FIELD_NUMBER: _ClassVar[int]
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    FPS_FIELD_NUMBER: _ClassVar[int]
    repo_id: str
    features: _containers.RepeatedCompositeFieldContainer[FeatureSpec]
    episodes: int
    frames: int
    fps: float
    def __init__(self, repo_id: _Optional[str] = ..., features: _Optional[_Iterable[_Union[FeatureSpec, _Mapping]]] = ..., episodes: _Optional[int] = ..., frames: _Optional[int] = ..., fps: _Optional[float] = ...) -> None: ...

class JoinRequest(_message.Message):
    __slots__ = ("participant_name", "dataset", "session_id")
    PARTICIPANT_NAME_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    participant_name: str
    dataset: DatasetDescription
    session_id: str
    def __init__(self, participant_name: _Optional[str] = ..., dataset: _Optional[_Union[DatasetDescription, _Mapping]] = ..., session_id: _Optional[str] = ...) -> None: ...

class JoinResponse(_message.Message):
    __slots__ = ("lease_seconds", "run_id", "config_toml", "frozen_sha256", "normalization_json", "session_id")
    LEASE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    CONFIG_TOML_FIELD_NUMBER: _ClassVar[int]
    FROZEN_SHA256_FIELD_NUMBER: _ClassVar[int]
    NORMALIZATION_JSON_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    lease_seconds: float
    run_id: str
    config_toml: str
    frozen_sha256: str
    normalization_json: str
    session_id: str
    def __init__(self, lease_seconds: _Optional[float] = ..., run_id: _Optional[str] = ..., config_toml: _Optional[str] = ..., frozen_sha256: _Optional[str] = ..., normalization_json: _Optional[str] = ..., session_id: _Optional[str] = ...) -> None: ...

class HeartbeatRequest(_message.Message):
    __slots__ = ("participant_id", "session_id")
    PARTICIPANT_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    participant_id: str
    session_id: str
    def __init__(self, participant_id: _Optional[str] = ..., session_id: _Optional[str] = ...) -> None: ...

class HeartbeatResponse(_message.Message):
    __slots__ = ("run_active", "registered")
    RUN_ACTIVE_FIELD_NUMBER: _ClassVar[int]
    REGISTERED_FIELD_NUMBER: _ClassVar[int]
    run_active: bool
    registered: bool
    def __init__(self, run_active: _Optional[bool] = ..., registered: _Optional[bool] = ...) -> None: ...

class GetTaskRequest(_message.Message):
    __slots__ = ("participant_id", "session_id")
    PARTICIPANT_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    participant_id: str
    session_id: str
    def __init__(self, participant_id: _Optional[str] = ..., session_id: _Optional[str] = ...) -> None: ...

class Hyperparameters(_message.Message):
    __slots__ = ("local_steps", "lr", "mu", "seed")
    LOCAL_STEPS_FIELD_NUMBER: _ClassVar[int]
    LR_FIELD_NUMBER: _ClassVar[int]
    MU_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    local_steps: int
    lr: float
    mu: float
    seed: int
    def __init__(self, local_steps: _Optional[int] = ..., lr: _Optional[float] = ..., mu: _Optional[float] = ..., seed: _Optional[int] = ...) -> None: ...

class TrainTask(_message.Message):
    __slots__ = ("round", "model_version", "model_size", "manifest", "hyperparameters", "deadline_seconds")
    ROUND_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    MODEL_SIZE_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_FIELD_NUMBER: _ClassVar[int]
    HYPERPARAMETERS_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    round: int
    model_version: str
    model_size: int
    manifest: TensorManifest
    hyperparameters: Hyperparameters
    deadline_seconds: float
    def __init__(self, round: _Optional[int] = ..., model_version: _Optional[str] = ..., model_size: _Optional[int] = ..., manifest: _Optional[_Union[TensorManifest, _Mapping]] = ..., hyperparameters: _Optional[_Union[Hyperparameters, _Mapping]] = ..., deadline_seconds: _Optional[float] = ...) -> None: ...

class Wait(_message.Message):
    __slots__ = ("seconds", "reason")
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    seconds: float
    reason: str
    def __init__(self, seconds: _Optional[float] = ..., reason: _Optional[str] = ...) -> None: ...

class Done(_message.Message):
    __slots__ = ("reason",)
    REASON_FIELD_NUMBER: _ClassVar[int]
    reason: str
    def __init__(self, reason: _Optional[str] = ...) -> None: ...

class GetTaskResponse(_message.Message):
    __slots__ = ("train", "wait", "done")
    TRAIN_FIELD_NUMBER: _ClassVar[int]
    WAIT_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    train: TrainTask
    wait: Wait
    done: Done
    def __init__(self, train: _Optional[_Union[TrainTask, _Mapping]] = ..., wait: _Optional[_Union[Wait, _Mapping]] = ..., done: _Optional[_Union[Done, _Mapping]] = ...) -> None: ...

class DownloadModelRequest(_message.Message):
    __slots__ = ("participant_id", "version", "offset", "session_id")
    PARTICIPANT_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    participant_id: str
    version: str
    offset: int
    session_id: str
    def __init__(self, participant_id: _Optional[str] = ..., version: _Optional[str] = ..., offset: _Optional[int] = ..., session_id: _Optional[str] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("version", "size")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    version: str
    size: int
    def __init__(self, version: _Optional[str] = ..., size: _Optional[int] = ...) -> None: ...

class DownloadModelResponse(_message.Message):
    __slots__ = ("info", "chunk")
    INFO_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    info: ModelInfo
    chunk: Chunk
    def __init__(self, info: _Optional[_Union[ModelInfo, _Mapping]] = ..., chunk: _Optional[_Union[Chunk, _Mapping]] = ...) -> None: ...

class UpdateHeader(_message.Message):
    __slots__ = ("participant_id", "round", "base_version", "sample_count", "metrics", "size", "sha256", "session_id")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    PARTICIPANT_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    BASE_VERSION_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_COUNT_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    participant_id: str
    round: int
    base_version: str
    sample_count: int
    metrics: _containers.ScalarMap[str, float]
    size: int
    sha256: str
    session_id: str
    def __init__(self, participant_id: _Optional[str] = ..., round: _Optional[int] = ..., base_version: _Optional[str] = ..., sample_count: _Optional[int] = ..., metrics: _Optional[_Mapping[str, float]] = ..., size: _Optional[int] = ..., sha256: _Optional[str] = ..., session_id: _Optional[str] = ...) -> None: ...

class UploadUpdateRequest(_message.Message):
    __slots__ = ("header", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: UpdateHeader
    chunk: Chunk
    def __init__(self, header: _Optional[_Union[UpdateHeader, _Mapping]] = ..., chunk: _Optional[_Union[Chunk, _Mapping]] = ...) -> None: ...

class UploadUpdateResponse(_message.Message):
    __slots__ = ("accepted", "refusal", "reason")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    REFUSAL_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    accepted: bool
    refusal: Refusal
    reason: str
    def __init__(self, accepted: _Optional[bool] = ..., refusal: _Optional[_Union[Refusal, str]] = ..., reason: _Optional[str] = ...) -> None: ...

class ReportEvaluationRequest(_message.Message):
    __slots__ = ("participant_id", "round", "version", "metrics", "session_id")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    PARTICIPANT_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    participant_id: str
    round: int
    version: str
    metrics: _containers.ScalarMap[str, float]
    session_id: str
    def __init__(self, participant_id: _Optional[str] = ..., round: _Optional[int] = ..., version: _Optional[str] = ..., metrics: _Optional[_Mapping[str, float]] = ..., session_id: _Optional[str] = ...) -> None: ...

class ReportEvaluationResponse(_message.Message):
    __slots__ = ("recorded", "reason")
    RECORDED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    recorded: bool
    reason: str
    def __init__(self, recorded: _Optional[bool] = ..., reason: _Optional[str] = ...) -> None: ...

class LeaveRequest(_message.Message):
    __slots__ = ("participant_id", "session_id", "reason")
    PARTICIPANT_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    participant_id: str
    session_id: str
    reason: str
    def __init__(self, participant_id: _Optional[str] = ..., session_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class LeaveResponse(_message.Message):
    __slots__ = ("left",)
    LEFT_FIELD_NUMBER: _ClassVar[int]
    left: bool
    def __init__(self, left: _Optional[bool] = ...) -> None: ...
