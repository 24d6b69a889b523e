"""The one typed configuration: TOML file + `--set section.key=value` overrides, validated once on load.

Every key here is read somewhere; an unknown key, a wrong type or an out-of-range value is refused with a
message that names the key, before any work starts.
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zk0.config_checks import ConfigError, non_negative, one_of, positive
from zk0.config_rules import AdaptiveConfig, StrategyConfig

SCHEDULES = ("cosine", "cosine_restarts", "plateau")
STRATEGIES = ("fedprox", "fedavg", "median", "trimmed_mean", "norm_bounded", "fedadam", "fedyogi")
PRECISIONS = ("auto", "32-true", "bf16-mixed", "16-mixed", "bf16-true")


@dataclass
class ModelConfig:
    # "tiny" builds the demo's tiny SmolVLA offline; otherwise a hub id (lerobot/smolvla_base) or a local
    # pretrained directory (a lerobot checkpoint's pretrained_model/ or a zk0 export).
    source: str = "tiny"
    chunk_size: int = 50
    n_action_steps: int = 50
    freeze_vision_encoder: bool = True
    train_expert_only: bool = True
    train_state_proj: bool = True

    def check(self) -> None:
        positive("model.chunk_size", self.chunk_size)
        positive("model.n_action_steps", self.n_action_steps)
        if self.n_action_steps > self.chunk_size:
            raise ConfigError(
                f"model.n_action_steps: {self.n_action_steps} exceeds model.chunk_size {self.chunk_size}"
            )
        if not self.source:
            raise ConfigError("model.source: must not be empty (use 'tiny', a hub id or a local directory)")


@dataclass
class DataConfig:
    # Dataset specs: "demo:NAME" (generated), a local dataset directory, or a hub repo id "owner/name".
    participants: list[str] = field(default_factory=lambda: ["demo:p0", "demo:p1", "demo:p2"])
    eval: list[str] = field(default_factory=lambda: ["demo:eval"])
    heldout_episodes: int = 1
    fps: int = 30
    state_dim: int = 6
    action_dim: int = 6
    num_workers: int = 0
    # "coordinator": state/action normalized with the coordinator's evaluation-data statistics, shared by
    # all; "local": each participant uses its own dataset's statistics (see zk0/normalization.py).
    normalization: str = "local"

    def check(self) -> None:
        one_of("data.normalization", self.normalization, ("coordinator", "local"))
        if not self.participants:
            raise ConfigError("data.participants: at least one dataset is required")
        non_negative("data.heldout_episodes", self.heldout_episodes)
        positive("data.fps", self.fps)
        positive("data.state_dim", self.state_dim)
        positive("data.action_dim", self.action_dim)
        non_negative("data.num_workers", self.num_workers)


@dataclass
class DemoConfig:
    root: str = ".zk0/demo"
    seed: int = 0
    episodes: int = 8
    frames_per_episode: int = 60
    # demo:eval draws its targets in the colours of p0..p{participants-1}: what their union can learn.
    participants: int = 3

    def check(self) -> None:
        positive("demo.episodes", self.episodes)
        positive("demo.frames_per_episode", self.frames_per_episode)
        positive("demo.participants", self.participants)


@dataclass
class TrainConfig:
    batch_size: int = 8
    lr: float = 1e-4
    local_steps: int = 20
    schedule: str = "cosine"
    min_lr: float = 2.5e-6
    restart_steps: int = 10
    plateau_factor: float = 0.5
    plateau_patience: int = 5
    grad_clip_norm: float = 10.0
    precision: str = "auto"
    device: str = "auto"
    max_bad_batches: int = 10

    def check(self) -> None:
        positive("train.batch_size", self.batch_size)
        positive("train.lr", self.lr)
        positive("train.local_steps", self.local_steps)
        one_of("train.schedule", self.schedule, SCHEDULES)
        non_negative("train.min_lr", self.min_lr)
        if self.min_lr > self.lr:
            raise ConfigError(f"train.min_lr: {self.min_lr} exceeds train.lr {self.lr}")
        positive("train.restart_steps", self.restart_steps)
        if not 0 < self.plateau_factor < 1:
            raise ConfigError(f"train.plateau_factor: {self.plateau_factor} must be in (0, 1)")
        non_negative("train.plateau_patience", self.plateau_patience)
        non_negative("train.grad_clip_norm", self.grad_clip_norm)
        one_of("train.precision", self.precision, PRECISIONS)
        if self.device not in ("auto", "cpu") and not self.device.startswith(("cuda", "mps")):
            raise ConfigError(f"train.device: {self.device!r} is not one of auto, cpu, cuda[:N], mps")
        non_negative("train.max_bad_batches", self.max_bad_batches)


@dataclass
class FederationConfig:
    rounds: int = 3
    # How a round is planned and aggregated (coordinator/strategies/, options in [strategy]): "fedavg";
    # "fedprox" (FedAvg, and participants train with `mu`; every other strategy sends mu = 0); the robust
    # "median", "trimmed_mean", "norm_bounded"; the server optimizers "fedadam", "fedyogi".
    strategy: str = "fedprox"
    mu: float = 0.01
    # Server learning rate: the new global model is old + server_lr * (aggregate - old); 1 = the aggregate.
    # Read by every strategy but fedadam/fedyogi, which step with strategy.eta.
    server_lr: float = 1.0
    min_participants: int = 2
    fraction: float = 1.0
    min_updates: int = 2
    join_timeout_s: float = 600.0
    # What to do when min_participants have not joined by join_timeout_s: keep waiting, or stop the run.
    on_join_timeout: str = "wait"
    round_timeout_s: float = 1800.0
    max_round_attempts: int = 3
    lease_s: float = 30.0
    chunk_kib: int = 4096
    max_update_mib: int = 4096
    # Uploads and downloads in progress at once; more are refused at once (RESOURCE_EXHAUSTED, retried).
    max_transfers: int = 16
    # An upload whose header has not arrived this long after it opened is cancelled.
    header_timeout_s: float = 10.0
    # A transfer that moved no bytes this long is cancelled (progress-based: a slow but moving one never is).
    transfer_idle_timeout_s: float = 60.0
    # An update farther than this (L2 distance from the round's base model) is refused at upload; 0 = off.
    max_update_norm: float = 10000.0
    # With 3+ updates, one farther than this x the round's median distance is left out; 0 = off.
    update_norm_median_factor: float = 10.0
    # Membership bounds (coordinator/membership.py): live members at once, and new sessions admitted per
    # second on average with bursts of join_burst (a token bucket); refused joins are RESOURCE_EXHAUSTED.
    max_members: int = 256
    joins_per_second: float = 20.0
    join_burst: int = 50

    def check(self) -> None:
        positive("federation.rounds", self.rounds)
        one_of("federation.strategy", self.strategy, STRATEGIES)
        non_negative("federation.mu", self.mu)
        positive("federation.server_lr", self.server_lr)
        positive("federation.min_participants", self.min_participants)
        if not 0 < self.fraction <= 1:
            raise ConfigError(f"federation.fraction: {self.fraction} must be in (0, 1]")
        positive("federation.min_updates", self.min_updates)
        if self.min_updates > self.min_participants:
            raise ConfigError(
                f"federation.min_updates: {self.min_updates} exceeds federation.min_participants "
                f"{self.min_participants}, so no round could ever aggregate"
            )
        positive("federation.join_timeout_s", self.join_timeout_s)
        one_of("federation.on_join_timeout", self.on_join_timeout, ("wait", "stop"))
        positive("federation.round_timeout_s", self.round_timeout_s)
        positive("federation.max_round_attempts", self.max_round_attempts)
        positive("federation.lease_s", self.lease_s)
        if not 1024 <= self.chunk_kib <= 4096:
            raise ConfigError(f"federation.chunk_kib: {self.chunk_kib} must be within 1024..4096 (1-4 MiB)")
        positive("federation.max_update_mib", self.max_update_mib)
        positive("federation.max_transfers", self.max_transfers)
        positive("federation.header_timeout_s", self.header_timeout_s)
        positive("federation.transfer_idle_timeout_s", self.transfer_idle_timeout_s)
        non_negative("federation.max_update_norm", self.max_update_norm)
        factor = self.update_norm_median_factor
        if factor != 0 and not factor > 1:
            raise ConfigError(f"federation.update_norm_median_factor: {factor} must be > 1 (0 = off)")
        positive("federation.max_members", self.max_members)
        if self.max_members < self.min_participants:
            raise ConfigError(
                f"federation.max_members: {self.max_members} is below federation.min_participants "
                f"{self.min_participants}, so the run could never start"
            )
        positive("federation.joins_per_second", self.joins_per_second)
        positive("federation.join_burst", self.join_burst)


@dataclass
class EvalConfig:
    batch_size: int = 8
    # 0 evaluates the whole held-out data; N caps it at N batches.
    batches: int = 0
    seed: int = 1234
    # The global model is evaluated at round 0, every `every` rounds, and at the last round.
    every: int = 1
    # Also predict action chunks and report their mean absolute error (slower: num_steps denoising passes).
    action_error: bool = True

    def check(self) -> None:
        positive("eval.batch_size", self.batch_size)
        non_negative("eval.batches", self.batches)
        positive("eval.every", self.every)

    def due(self, round_idx: int, last_round: int) -> bool:
        return round_idx == 0 or round_idx == last_round or round_idx % self.every == 0


@dataclass
class Config:
    seed: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    demo: DemoConfig = field(default_factory=DemoConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    federation: FederationConfig = field(default_factory=FederationConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    adaptive: AdaptiveConfig = field(default_factory=AdaptiveConfig)

    def check(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if dataclasses.is_dataclass(value):
                value.check()
        self.adaptive.check_against(self.federation, self.train)
        self.strategy.check_against(self.federation)

    def uses_demo(self) -> bool:
        return any(s.startswith("demo:") for s in [*self.data.participants, *self.data.eval])


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read TOML (or start from defaults), apply `section.key=value` overrides, validate, return."""
    if path is None:
        return _resolve({}, overrides)
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    return load_config_text(path.read_text(), f"config file {path}", overrides)


def load_config_text(text: str, origin: str, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """The same, from TOML text (e.g. the config a coordinator sends its participants)."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{origin}: invalid TOML: {e}") from e
    return _resolve(raw, overrides)


def _resolve(raw: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> Config:
    for item in overrides:
        _apply_override(raw, item)
    config = _build(Config, raw, prefix="")
    config.check()
    return config


def config_to_toml(config: Config) -> str:
    """Serialize a resolved config so a run directory's snapshot can be fed back with --config."""
    lines: list[str] = []
    nested: list[tuple[str, Any]] = []
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            nested.append((f.name, value))
        else:
            lines.append(f"{f.name} = {_toml_value(value)}")
    for name, section in nested:
        lines.append(f"\n[{name}]")
        for f in dataclasses.fields(section):
            lines.append(f"{f.name} = {_toml_value(getattr(section, f.name))}")
    return "\n".join(lines) + "\n"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def _apply_override(raw: dict[str, Any], item: str) -> None:
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set {item!r}: expected section.key=value")
    try:
        value = tomllib.loads(f"v = {text.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = text.strip()  # a bare string such as lerobot/smolvla_base needs no quotes on the command line
    node = raw
    *parents, leaf = key.split(".")
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {key}: {part!r} is a value, not a section")
        node = child
    node[leaf] = value


def _build(cls: type, raw: Any, prefix: str) -> Any:
    where = prefix.rstrip(".") or "the config"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a table, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in names:
            raise ConfigError(f"{prefix}{key}: unknown key (known: {', '.join(sorted(names))})")
    kwargs = {}
    for key, value in raw.items():
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            kwargs[key] = _build(hint, value, f"{prefix}{key}.")
        else:
            kwargs[key] = _coerce(f"{prefix}{key}", value, hint)
    return cls(**kwargs)


def _coerce(key: str, value: Any, hint: Any) -> Any:
    origin = typing.get_origin(hint)
    if origin is list:
        (item_type,) = typing.get_args(hint)
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list of {item_type.__name__}, got {value!r}")
        return [_coerce(f"{key}[{i}]", v, item_type) for i, v in enumerate(value)]
    if origin in (typing.Union, types.UnionType):
        raise TypeError(f"{key}: optional config values are not supported")
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is bool and not isinstance(value, bool):
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if hint is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if not isinstance(value, hint):
        raise ConfigError(f"{key}: expected {hint.__name__}, got {type(value).__name__} {value!r}")
    return value
