"""Federation strategies, one module each (see base.py for the seam). `make` builds the configured one;
every module of the package is imported first, so a new module's strategy registers itself."""

from __future__ import annotations

import importlib
import pkgutil

from coordinator.strategies.base import Aggregate, RoundUpdates, Strategy, registered
from zk0.config import Config

__all__ = ["Aggregate", "RoundUpdates", "Strategy", "available", "make"]


def available() -> dict[str, type[Strategy]]:
    """Every strategy of the package, by name."""
    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")
    return registered()


def make(config: Config) -> Strategy:
    return available()[config.federation.strategy](config)
