"""One upload attempt, from its chunks to a verified, validated file of its own, and its distance from the
base model.

Each attempt spools to a path no other attempt uses, so a retry racing its predecessor (a client resending
after UNAVAILABLE or a deadline) can never delete or overwrite an accepted update: the round state machine
moves the file into place only once it accepts it, under its lock. A storage failure (a full disk, a quota)
is the coordinator's problem, not the update's: it surfaces as `StorageError`, which the servicer turns into
a status the participant retries, never into a refusal that costs it the round.
"""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Callable, Collection, Iterable, Mapping
from pathlib import Path

from coordinator.update_bounds import absolute_violation, update_distance
from zk0.errors import Zk0Error
from zk0.payload import PayloadRejected
from zk0.records import EVALUATION_METRICS
from zk0.spool import SpoolReader
from zk0.tensors import Manifest
from zk0.transfer import FileAssembler
from zk0.validation import (
    Refusal,
    UpdateHeader,
    UpdateRejected,
    validate_metrics,
    validate_tensors,
)

log = logging.getLogger(__name__)


class StorageError(Zk0Error):
    """The coordinator could not store an upload (e.g. its disk is full); the participant should retry."""


def attempt_path(final: Path) -> Path:
    """A fresh hidden path beside `final` for one upload attempt."""
    return final.with_name(f".{final.stem}.{secrets.token_hex(6)}.attempt{final.suffix}")


def storage_error(err: OSError, what: str) -> StorageError:
    """The one message a storage failure gets, naming its cause (e.g. 'No space left on device'); logged
    here, once, with the path and errno."""
    log.error("coordinator storage: %s failed: %s", what, err)
    return StorageError(f"coordinator storage: {err.strerror or err} ({what})")


def keep_attempt(path: Path, final: Path, record: Callable[[], None]) -> None:
    """Move an accepted attempt into place and `record` it; StorageError (and no attempt file) if either
    fails. Call it under the lock that decides acceptance, so no other attempt can interleave."""
    try:
        os.replace(path, final)
        record()
    except OSError as e:
        path.unlink(missing_ok=True)
        raise storage_error(e, f"keeping the update {final.name}") from e


def spool_attempt(
    header: UpdateHeader,
    chunks: Iterable[tuple[int, bytes]],
    final: Path,
    manifest: Manifest,
    base: Path,
    *,
    max_bytes: int,
    max_norm: float,
    touch: Callable[[], None],
) -> tuple[Path, float]:
    """Spool, verify and validate one upload into a file of its own; returns it and its distance from `base`.

    UpdateRejected says what is wrong with the update, StorageError that the coordinator could not store it;
    either way no file of this attempt is left behind.
    """
    path = attempt_path(final)
    try:
        try:
            with FileAssembler(path, header.size, header.sha256, max_bytes) as assembler:
                for offset, data in chunks:
                    assembler.add(offset, data)
                    touch()
                assembler.finish()
        except PayloadRejected as e:
            raise UpdateRejected(Refusal.CORRUPT_PAYLOAD, e.reason) from e
        except OSError as e:
            raise storage_error(e, f"spooling the update of {header.participant_id}") from e
        validate_tensors(path, manifest)
        with SpoolReader(path) as update, SpoolReader(base) as base_model:
            distance = update_distance(update, base_model)
        violation = absolute_violation(distance, max_norm)
        if violation is not None:
            raise UpdateRejected(Refusal.BAD_TENSORS, violation)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return path, distance


def evaluation_problem(
    name: str,
    round_idx: int,
    metrics: Mapping[str, float],
    sampled: Collection[str],
    reported: Collection[str],
) -> str:
    """Why a participant's evaluation of the round's model is not recorded ('' when it is): only from a
    participant sampled in the round, once, with finite metrics (any token holder can send one)."""
    if name not in sampled:
        return f"participant {name} is not sampled in round {round_idx}"
    if name in reported:
        return f"participant {name} already reported its evaluation of round {round_idx}"
    try:
        validate_metrics(metrics, EVALUATION_METRICS, "evaluation metrics")
    except UpdateRejected as e:
        return e.reason
    return ""
