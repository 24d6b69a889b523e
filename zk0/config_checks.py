"""The config's error type and the value checks every section uses (pure; no I/O)."""

from __future__ import annotations

from zk0.errors import Zk0Error


class ConfigError(Zk0Error):
    """A config problem; the message starts with the offending key."""


def positive(key: str, value: float) -> None:
    if value <= 0:
        raise ConfigError(f"{key}: must be > 0, got {value}")


def non_negative(key: str, value: float) -> None:
    if value < 0:
        raise ConfigError(f"{key}: must be >= 0, got {value}")


def factor(key: str, value: float) -> None:
    if not 0 < value < 1:
        raise ConfigError(f"{key}: {value} must be in (0, 1)")


def one_of(key: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{key}: {value!r} is not one of {', '.join(allowed)}")
