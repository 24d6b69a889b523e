"""Checks an uploaded update must pass before it counts; each refusal carries a precise, loggable reason.

Two stages, because they need different inputs: `validate_update` checks the header before any byte is
received (so a stale or oversized upload is refused without spooling it), `validate_tensors` checks the
received tensors against the round's manifest (names, dtypes, shapes, finite values). Pure functions: the
servicer owns state (who is in the round) and maps `UpdateRejected.refusal` onto the wire enum.
"""

import enum
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from zk0.payload import PayloadRejected, is_sha256_hex
from zk0.records import UPDATE_METRICS  # one list: intake requires them, the round record reads them
from zk0.spool import SpoolReader
from zk0.tensors import Manifest
from zk0.v1 import federation_pb2 as pb

_MAX_LISTED = 8  # problems named in one reason; the rest are counted
MAX_METRICS = 64  # entries in one upload's or evaluation's metrics map
MAX_METRIC_KEY = 64  # characters in one metric's name


class Refusal(enum.Enum):
    """Why an upload was refused; mirrors the proto enum `Refusal` (REFUSAL_<name>)."""

    WRONG_ROUND = "wrong_round"
    WRONG_BASE = "wrong_base"
    BAD_HEADER = "bad_header"
    TOO_LARGE = "too_large"
    CORRUPT_PAYLOAD = "corrupt_payload"
    BAD_TENSORS = "bad_tensors"
    NOT_IN_ROUND = "not_in_round"

    def to_proto(self) -> int:
        return pb.Refusal.Value(f"REFUSAL_{self.name}")


class UpdateRejected(Exception):
    """An update that must not be aggregated; `reason` is sent back to the participant verbatim."""

    def __init__(self, refusal: Refusal, reason: str) -> None:
        super().__init__(f"{refusal.value}: {reason}")
        self.refusal = refusal
        self.reason = reason


@dataclass(frozen=True)
class UpdateHeader:
    """The fields an upload declares before its bytes, independent of protobuf."""

    participant_id: str
    round: int
    base_version: str
    sample_count: int
    size: int
    sha256: str
    metrics: Mapping[str, float] = field(default_factory=dict)
    # The uploader's session (issued at Join): the servicer checks it before any byte is spooled.
    session_id: str = ""

    @classmethod
    def from_proto(cls, message: pb.UpdateHeader) -> "UpdateHeader":
        return cls(
            participant_id=message.participant_id,
            round=message.round,
            base_version=message.base_version,
            sample_count=message.sample_count,
            size=message.size,
            sha256=message.sha256,
            metrics=dict(message.metrics),
            session_id=message.session_id,
        )

    def to_proto(self) -> pb.UpdateHeader:
        return pb.UpdateHeader(
            participant_id=self.participant_id,
            round=self.round,
            base_version=self.base_version,
            sample_count=self.sample_count,
            metrics=dict(self.metrics),
            size=self.size,
            sha256=self.sha256,
            session_id=self.session_id,
        )


def _short(version: str) -> str:
    return version[:12] if is_sha256_hex(version) else repr(version)


def validate_metrics(metrics: Mapping[str, float], required: Iterable[str], what: str = "metrics") -> None:
    """Refuse a metrics map the coordinator could not record or read: a required key missing, a value that
    is not a finite number, too many entries or an overlong key (they go to metrics.jsonl verbatim)."""
    if len(metrics) > MAX_METRICS:
        raise UpdateRejected(Refusal.BAD_HEADER, f"{what}: {len(metrics)} entries, more than {MAX_METRICS}")
    problems = [f"{key!r} missing" for key in required if key not in metrics]
    for key, value in metrics.items():
        if not key or len(key) > MAX_METRIC_KEY:
            problems.append(f"key {key[:MAX_METRIC_KEY]!r}... must be 1-{MAX_METRIC_KEY} characters")
        elif not (isinstance(value, int | float) and math.isfinite(value)):
            problems.append(f"{key!r} = {value!r} is not a finite number")
    if problems:
        listed = "; ".join(problems[:_MAX_LISTED])
        more = len(problems) - _MAX_LISTED
        raise UpdateRejected(
            Refusal.BAD_HEADER, f"{what}: {listed}" + (f"; and {more} more" if more > 0 else "")
        )


def validate_update(
    header: UpdateHeader,
    manifest: Manifest,
    *,
    current_round: int,
    current_version: str,
    max_bytes: int,
    max_samples: int | None = None,
) -> None:
    """Refuse a header that cannot yield a countable update; returns None when it may proceed.

    `max_samples`: the most samples a round's local training can see (local steps x batch size); a larger
    sample count would outweigh every honest participant in FedAvg."""
    if not header.participant_id:
        raise UpdateRejected(Refusal.BAD_HEADER, "missing participant id")
    if header.round < current_round:
        raise UpdateRejected(
            Refusal.WRONG_ROUND, f"stale round {header.round} (current round is {current_round})"
        )
    if header.round > current_round:
        raise UpdateRejected(
            Refusal.WRONG_ROUND, f"future round {header.round} (current round is {current_round})"
        )
    if header.base_version != current_version:
        raise UpdateRejected(
            Refusal.WRONG_BASE,
            f"base version {_short(header.base_version)} != current version {_short(current_version)}",
        )
    if header.sample_count <= 0:
        raise UpdateRejected(Refusal.BAD_HEADER, f"sample count {header.sample_count} must be > 0")
    if max_samples is not None and header.sample_count > max_samples:
        raise UpdateRejected(
            Refusal.BAD_HEADER,
            f"sample count {header.sample_count} exceeds the round's {max_samples} "
            "(train.local_steps x train.batch_size)",
        )
    if not is_sha256_hex(header.sha256):
        raise UpdateRejected(Refusal.BAD_HEADER, f"sha256 {header.sha256!r} is not 64 lowercase hex digits")
    if header.size > max_bytes:
        raise UpdateRejected(
            Refusal.TOO_LARGE, f"declared size {header.size} bytes exceeds the bound of {max_bytes} bytes"
        )
    if header.size < manifest.num_bytes:
        raise UpdateRejected(
            Refusal.BAD_HEADER,
            f"declared size {header.size} bytes is below the manifest's {manifest.num_bytes} tensor bytes",
        )
    validate_metrics(header.metrics, UPDATE_METRICS, "update metrics")


def _refuse_all(problems: list[str]) -> None:
    if not problems:
        return
    listed = "; ".join(problems[:_MAX_LISTED])
    more = len(problems) - _MAX_LISTED
    raise UpdateRejected(Refusal.BAD_TENSORS, listed + (f"; and {more} more" if more > 0 else ""))


def _count_non_finite(tensor: torch.Tensor) -> int:
    """NaN and Inf values in a float or complex tensor, counted in the calling thread.

    numpy, not torch: torch starts an OpenMP team per calling thread, so updates validated at once in
    several server threads oversubscribe the cores, and on a busy host every parallel region waits for a
    descheduled helper (a 400 MB update took 5 s instead of 0.15 s on a loaded 2-core machine).
    """
    flat = tensor.reshape(-1)
    if flat.dtype == torch.bfloat16:  # no numpy bfloat16: Inf and NaN are the all-ones exponents
        exponent = np.int16(0x7F80)
        return int(np.count_nonzero((flat.view(torch.int16).numpy() & exponent) == exponent))
    try:
        values = flat.numpy()
    except TypeError:  # float8 and complex32 have no numpy dtype
        if flat.element_size() == 1:  # float8: isfinite is not implemented for every variant
            flat = flat.float()
        return int(flat.numel() - torch.isfinite(flat).sum().item())
    return int(values.size - np.count_nonzero(np.isfinite(values)))


def validate_tensors(update: Mapping[str, torch.Tensor] | Path, manifest: Manifest) -> None:
    """Refuse tensors that differ from the manifest or hold NaN/Inf, naming every offending tensor.

    `update` is a dict, a `SpoolReader`, or the path of a spooled file; from a file, names, dtypes and
    shapes are checked from its header first, then values are loaded one tensor at a time. A file that is
    not safetensors at all is refused as BAD_TENSORS: its bytes matched their hash, so resending won't help.
    """
    if isinstance(update, Path):
        try:
            reader = SpoolReader(update)
        except PayloadRejected as err:
            raise UpdateRejected(Refusal.BAD_TENSORS, err.reason) from err
        with reader:
            validate_tensors(reader, manifest)
        return
    state = update
    try:
        actual = Manifest.of(state)
    except PayloadRejected as err:
        raise UpdateRejected(Refusal.BAD_TENSORS, err.reason) from err
    problems = [f"tensor {name!r}: missing" for name in manifest.names if name not in actual.by_name]
    problems += [
        f"tensor {name!r}: not in the manifest" for name in actual.names if name not in manifest.by_name
    ]
    for expected in manifest:
        got = actual.by_name.get(expected.name)
        if got is None:
            continue
        if got.dtype != expected.dtype:
            problems.append(f"tensor {expected.name!r}: dtype {got.dtype} != manifest {expected.dtype}")
        if got.shape != expected.shape:
            problems.append(f"tensor {expected.name!r}: shape {got.shape} != manifest {expected.shape}")
    _refuse_all(problems)
    for spec in manifest:
        tensor = state[spec.name]
        if not (tensor.is_floating_point() or tensor.is_complex()):
            continue
        bad = _count_non_finite(tensor)
        if bad:
            noun = "value" if bad == 1 else "values"
            problems.append(f"tensor {spec.name!r}: {bad} non-finite {noun}")
    _refuse_all(problems)
