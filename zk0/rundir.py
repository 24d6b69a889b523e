"""The run directory, the source of truth of a run: config snapshot, metrics.jsonl, TensorBoard, final/."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from torch.utils.tensorboard import SummaryWriter

from zk0.config import Config, config_to_toml
from zk0.errors import Zk0Error

CONFIG_FILE = "config.toml"
METRICS_FILE = "metrics.jsonl"
FINAL_DIR = "final"
TENSORBOARD_DIR = "tensorboard"


class RunDir:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._writer: SummaryWriter | None = None

    @classmethod
    def create(cls, path: Path, config: Config) -> RunDir:
        """A fresh run directory; an existing run is never overwritten."""
        path = Path(path)
        if (path / METRICS_FILE).exists():
            raise Zk0Error(
                f"run directory {path} already holds a run ({METRICS_FILE}); choose another --run-dir"
            )
        path.mkdir(parents=True, exist_ok=True)
        (path / CONFIG_FILE).write_text(config_to_toml(config))
        return cls(path)

    @property
    def metrics_path(self) -> Path:
        return self.path / METRICS_FILE

    @property
    def final_dir(self) -> Path:
        return self.path / FINAL_DIR

    def record(self, entry: dict[str, Any], *, step: int) -> None:
        """Append one metrics line (flushed at once) and mirror every numeric leaf to TensorBoard."""
        with self.metrics_path.open("a") as f:
            f.write(json.dumps(entry, sort_keys=True) + "\n")
        writer = self.writer
        for tag, value in flatten(entry):
            writer.add_scalar(tag, value, global_step=step)
        writer.flush()

    def read_metrics(self) -> list[dict[str, Any]]:
        if not self.metrics_path.exists():
            return []
        return [json.loads(line) for line in self.metrics_path.read_text().splitlines() if line.strip()]

    @property
    def writer(self) -> SummaryWriter:
        if self._writer is None:
            self._writer = SummaryWriter(str(self.path / TENSORBOARD_DIR))
        return self._writer

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def flatten(entry: dict[str, Any], prefix: str = "") -> list[tuple[str, float]]:
    """Numeric leaves of a nested dict as (slash/separated/tag, value), skipping non-finite values."""
    out: list[tuple[str, float]] = []
    for key, value in entry.items():
        tag = f"{prefix}{key}"
        if isinstance(value, dict):
            out.extend(flatten(value, tag + "/"))
        elif isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            out.append((tag, float(value)))
    return out
