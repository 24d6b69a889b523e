"""The typed round record (`RoundEntry`): one metrics.jsonl line, for federated and centralized runs alike.

The coordinator builds one `RoundEntry` per attempt of a round (coordinator/rounds.py), adds the
evaluation, best model and adaptive decision (coordinator/server.py) and appends it through
`RunDir.record`; the centralized baseline builds its own. Adaptive, report, compare and the CLI read the
records through these types. `to_json()` writes exactly today's JSON layout (a field that is None is left
out), and `from_json()` reads every record written since that layout began, so old runs still load.

A round may be recorded more than once (a failed attempt without a "version", a round redone after a
restart): `latest_rounds` keeps the last aggregated record of each round, for every reader.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from zk0.errors import Zk0Error

# What every participant sends with its update: intake refuses an update without them
# (zk0.validation.validate_update) and a record's update must carry them (`Update.from_json`).
UPDATE_METRICS = ("policy_loss",)
TRAIN_LOSS = UPDATE_METRICS[0]  # the one adaptive reads
# What every participant's held-out evaluation reports (zk0.evaluation.evaluate) and the charts plot.
EVALUATION_METRICS = ("loss",)

Json = dict[str, Any]


def _drop_none(values: Mapping[str, Any]) -> Json:
    return {k: v for k, v in values.items() if v is not None}


@dataclass
class Hyperparameters:
    """What the round's participants trained with (lr_per_participant: the boosted; None if centralized)."""

    lr: float
    mu: float
    local_steps: int
    lr_per_participant: dict[str, float] | None = None

    def to_json(self) -> Json:
        return _drop_none(
            {
                "lr": self.lr,
                "mu": self.mu,
                "local_steps": self.local_steps,
                "lr_per_participant": self.lr_per_participant,
            }
        )

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Hyperparameters:
        per = data.get("lr_per_participant")
        return cls(data["lr"], data["mu"], data["local_steps"], None if per is None else dict(per))


@dataclass
class Refused:
    participant: str
    reason: str

    def to_json(self) -> Json:
        return {"participant": self.participant, "reason": self.reason}


@dataclass
class Participants:
    sampled: list[str]
    accepted: list[str]
    refused: list[Refused]
    dropped: list[str]

    def to_json(self) -> Json:
        return {
            "sampled": list(self.sampled),
            "accepted": list(self.accepted),
            "refused": [r.to_json() for r in self.refused],
            "dropped": list(self.dropped),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Participants:
        return cls(
            list(data["sampled"]),
            list(data["accepted"]),
            [Refused(r["participant"], r["reason"]) for r in data["refused"]],
            list(data["dropped"]),
        )


@dataclass
class Update:
    """One accepted update: the participant's metrics (UPDATE_METRICS among them) beside what the
    coordinator measured. distance is None for an update kept from before a restart, never aggregated."""

    metrics: dict[str, float]
    sample_count: int
    bytes: int | None = None
    distance: float | None = None

    @property
    def policy_loss(self) -> float:
        return self.metrics[TRAIN_LOSS]

    def to_json(self) -> Json:
        out: Json = {**self.metrics, "sample_count": self.sample_count, "distance": self.distance}
        if self.bytes is not None:
            out["bytes"] = self.bytes
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Update:
        metrics = {k: v for k, v in data.items() if k not in ("sample_count", "bytes", "distance")}
        missing = [m for m in UPDATE_METRICS if m not in metrics]
        if missing:
            raise Zk0Error(f"an update record lacks the required metrics {missing}: {dict(data)}")
        return cls(metrics, data["sample_count"], data.get("bytes"), data.get("distance"))


@dataclass
class Evaluation:
    """Metrics per evaluation dataset and their sample-weighted composite (zk0.evaluation.evaluate_all)."""

    datasets: dict[str, dict[str, float]]
    composite: dict[str, float]

    @property
    def loss(self) -> float:
        return self.composite["loss"]

    def to_json(self) -> Json:
        return {"datasets": {n: dict(m) for n, m in self.datasets.items()}, "composite": dict(self.composite)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Evaluation:
        datasets = data.get("datasets") or {}
        return cls({n: dict(m) for n, m in datasets.items()}, dict(data["composite"]))


@dataclass
class Best:
    """The best global model so far, by composite evaluation loss (best.json holds the same three)."""

    round: int
    version: str
    loss: float

    def to_json(self) -> Json:
        return {"round": self.round, "version": self.version, "loss": self.loss}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Best:
        return cls(int(data["round"]), data["version"], data["loss"])


@dataclass
class Adaptive:
    """The adaptive decision taken after the round, for the next one (coordinator.adaptive.Decision)."""

    mu: float
    lr: float
    lr_per_participant: dict[str, float] = field(default_factory=dict)
    rules: list[str] = field(default_factory=list)
    hold: bool = False
    rollback: bool = False

    def to_json(self) -> Json:
        return {
            "mu": self.mu,
            "lr": self.lr,
            "lr_per_participant": dict(sorted(self.lr_per_participant.items())),
            "adaptive_rules": list(self.rules),
            "adaptive_hold": self.hold,
            "adaptive_rollback": self.rollback,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Adaptive:
        return cls(
            data["mu"],
            data["lr"],
            dict(data.get("lr_per_participant") or {}),
            list(data.get("adaptive_rules") or []),
            bool(data.get("adaptive_hold", False)),
            bool(data.get("adaptive_rollback", False)),
        )


@dataclass
class Traffic:
    down: int
    up: int

    def to_json(self) -> Json:
        return {"down": self.down, "up": self.up}


@dataclass
class Seconds:
    """Where the round's time went; aggregate is None for an attempt that was not aggregated."""

    wait_participants: float
    train: float
    aggregate: float | None = None

    def to_json(self) -> Json:
        return _drop_none(
            {"wait_participants": self.wait_participants, "train": self.train, "aggregate": self.aggregate}
        )


@dataclass
class RoundEntry:
    """One attempt of a round (federated), or one round of the centralized baseline (attempt, base_version,
    participants, updates, participant_eval, bytes and seconds None; steps, train and heldout its own).
    version is None for an attempt that gathered too few updates: it made no model. Round 0 is the initial
    model (round, version, eval, best)."""

    round: int
    version: str | None = None
    attempt: int | None = None
    base_version: str | None = None
    hyperparameters: Hyperparameters | None = None
    participants: Participants | None = None
    updates: dict[str, Update] | None = None
    participant_eval: dict[str, dict[str, float]] | None = None  # round r's starting model, per participant
    bytes: Traffic | None = None
    seconds: Seconds | None = None
    eval: Evaluation | None = None
    best: Best | None = None
    adaptive: Adaptive | None = None
    aggregation: dict[str, Any] = field(default_factory=dict)  # the strategy's name and per-round stats
    steps: int | None = None  # centralized: optimizer steps so far
    train: dict[str, float] | None = None  # centralized: the round's training result
    heldout: Evaluation | None = None  # centralized: each training dataset's held-out episodes

    @property
    def aggregated(self) -> bool:
        """The attempt made a global model (the round's record that counts, the last one if redone)."""
        return self.version is not None

    @property
    def train_losses(self) -> dict[str, float]:
        """Participant -> its training loss this round."""
        return {name: u.policy_loss for name, u in (self.updates or {}).items()}

    def to_json(self) -> Json:
        def json_of(value: Any) -> Any:
            return value.to_json() if hasattr(value, "to_json") else value

        out = {
            "round": self.round,
            "version": self.version,
            "attempt": self.attempt,
            "base_version": self.base_version,
            "hyperparameters": json_of(self.hyperparameters),
            "participants": json_of(self.participants),
            "updates": None if self.updates is None else {n: u.to_json() for n, u in self.updates.items()},
            "participant_eval": self.participant_eval,
            "bytes": json_of(self.bytes),
            "seconds": json_of(self.seconds),
            "eval": json_of(self.eval),
            "best": json_of(self.best),
            "adaptive": json_of(self.adaptive),
            "aggregation": self.aggregation or None,
            "steps": self.steps,
            "train": self.train,
            "heldout": json_of(self.heldout),
        }
        return _drop_none(out)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RoundEntry:
        unknown = sorted(set(data) - _FIELDS)
        if unknown:
            raise Zk0Error(f"a round record with unknown keys {unknown}: {dict(data)}")

        def read(key: str, parse):
            value = data.get(key)
            return None if value is None else parse(value)

        return cls(
            round=int(data["round"]),
            version=data.get("version"),
            attempt=read("attempt", int),
            base_version=data.get("base_version"),
            hyperparameters=read("hyperparameters", Hyperparameters.from_json),
            participants=read("participants", Participants.from_json),
            updates=read("updates", lambda u: {n: Update.from_json(m) for n, m in u.items()}),
            participant_eval=read("participant_eval", lambda p: {n: dict(m) for n, m in p.items()}),
            bytes=read("bytes", lambda b: Traffic(b["down"], b["up"])),
            seconds=read(
                "seconds", lambda s: Seconds(s["wait_participants"], s["train"], s.get("aggregate"))
            ),
            eval=read("eval", Evaluation.from_json),
            best=read("best", Best.from_json),
            adaptive=read("adaptive", Adaptive.from_json),
            aggregation=dict(data.get("aggregation") or {}),
            steps=read("steps", int),
            train=read("train", dict),
            heldout=read("heldout", Evaluation.from_json),
        )


_FIELDS = set(RoundEntry.__dataclass_fields__)


def latest_rounds(records: Iterable[RoundEntry]) -> dict[int, RoundEntry]:
    """Round -> its last aggregated record, in round order: a failed attempt (no version) never counts,
    and a round recorded again (redone after a restart) counts once, as last recorded."""
    kept: dict[int, RoundEntry] = {}
    for record in records:
        if record.aggregated:
            kept[record.round] = record
    return dict(sorted(kept.items()))
