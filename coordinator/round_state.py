"""The round's data: what a participant is told to do (Task), what the coordinator holds about the round in
progress (RoundState), and the attempt's record built from it (zk0.records.RoundEntry)."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from coordinator.adaptive import Decision
from zk0.errors import Zk0Error
from zk0.records import Hyperparameters, Participants, Refused, RoundEntry, Seconds, Traffic, Update
from zk0.tensors import Manifest
from zk0.validation import UpdateHeader

POLL_SECONDS = 0.5
WAITING_LOG_S = 10.0  # how often a coordinator waiting for participants says who it has


class TaskKind(Enum):
    """What a participant is told to do next: the values are the names of GetTaskResponse's `task` oneof."""

    TRAIN = "train"
    WAIT = "wait"
    DONE = "done"


@dataclass
class Task:
    """What a participant is told to do next; the fields of its kind apply, the others keep their defaults."""

    kind: TaskKind
    round: int = 0
    version: str = ""
    size: int = 0
    manifest: Manifest | None = None
    lr: float = 0.0
    mu: float = 0.0
    steps: int = 0
    seed: int = 0
    deadline_s: float = 0.0
    wait_s: float = 0.0
    reason: str = ""


@dataclass
class RoundState:
    round: int
    attempt: int
    sampled: list[str]
    deadline: float
    started: float
    accepted: dict[str, UpdateHeader] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)
    dropped: set[str] = field(default_factory=set)
    evaluations: dict[str, dict[str, float]] = field(default_factory=dict)
    uploading: set[str] = field(default_factory=set)  # at most one upload per participant at a time
    distances: dict[str, float] = field(default_factory=dict)  # accepted update -> ||update - base||
    bytes_down: int = 0
    bytes_up: int = 0

    def outstanding(self) -> set[str]:
        return set(self.sampled) - set(self.accepted) - set(self.refused) - self.dropped


class RunStopped(Zk0Error):
    """The run cannot go on (no participants in time, rounds that never gather enough updates)."""


def attempt_record(
    state: RoundState, *, base_version: str, plan: Decision, local_steps: int, waited: float, train_s: float
) -> RoundEntry:
    """The attempt's record before aggregation: who was sampled, accepted, refused and dropped, what each
    update reported, the traffic and the time it took."""
    return RoundEntry(
        round=state.round,
        attempt=state.attempt,
        base_version=base_version,
        hyperparameters=Hyperparameters(
            lr=plan.lr,
            mu=plan.mu,
            local_steps=local_steps,
            lr_per_participant=dict(sorted(plan.lr_per_participant.items())),
        ),
        participants=Participants(
            sampled=state.sampled,
            accepted=sorted(state.accepted),
            refused=[Refused(n, r) for n, r in sorted(state.refused.items())],
            dropped=sorted(state.dropped),
        ),
        updates={
            n: Update(
                dict(h.metrics),
                sample_count=h.sample_count,
                bytes=h.size,
                distance=state.distances.get(n),  # None: kept from a restart, never aggregated
            )
            for n, h in sorted(state.accepted.items())
        },
        participant_eval=dict(sorted(state.evaluations.items())),
        bytes=Traffic(down=state.bytes_down, up=state.bytes_up),
        seconds=Seconds(wait_participants=waited, train=train_s),
    )
