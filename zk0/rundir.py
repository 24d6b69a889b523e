"""The run directory, the source of truth of a run: config snapshot, metrics.jsonl, TensorBoard, final/,
and run.json (which command's run it is, and whether it finished)."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch.utils.tensorboard import SummaryWriter

from zk0.atomic_files import write_atomic
from zk0.config import Config, config_to_toml
from zk0.errors import Zk0Error
from zk0.records import RoundEntry

log = logging.getLogger(__name__)

CONFIG_FILE = "config.toml"
METRICS_FILE = "metrics.jsonl"
FINAL_DIR = "final"
TENSORBOARD_DIR = "tensorboard"
RUN_FILE = "run.json"


class RunDir:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._writer: SummaryWriter | None = None

    @classmethod
    def create(cls, path: Path, config: Config, *, kind: str | None = None) -> RunDir:
        """A fresh run directory; an existing run is never overwritten. `kind` (the command's: federated,
        centralized, compare) goes to run.json, which `zk0.reuse.reuse_run_dir` reads on the next start."""
        path = Path(path)
        if (path / METRICS_FILE).exists():
            raise Zk0Error(
                f"run directory {path} already holds a run ({METRICS_FILE}); choose another --run-dir"
            )
        path.mkdir(parents=True, exist_ok=True)
        write_atomic(path / CONFIG_FILE, config_to_toml(config).encode())
        run = cls(path)
        if kind is not None:
            run.write_info(kind=kind, finished=False)
        return run

    def info(self) -> dict[str, Any]:
        """run.json: {"kind": ..., "finished": bool}; {} for a directory written before it existed."""
        path = self.path / RUN_FILE
        return json.loads(path.read_text()) if path.exists() else {}

    def write_info(self, **values: Any) -> None:
        write_atomic(self.path / RUN_FILE, (json.dumps({**self.info(), **values}) + "\n").encode())

    def mark_finished(self) -> None:
        """The last write of a finished run: from here on, rerunning the command reports it."""
        self.write_info(finished=True)

    @property
    def metrics_path(self) -> Path:
        return self.path / METRICS_FILE

    @property
    def final_dir(self) -> Path:
        return self.path / FINAL_DIR

    def record(self, entry: RoundEntry, *, step: int) -> None:
        """Append one metrics line (flushed at once) and mirror every numeric leaf to TensorBoard: the one
        place a round record is written."""
        data = entry.to_json()
        with self.metrics_path.open("a") as f:
            f.write(json.dumps(data, sort_keys=True) + "\n")
        writer = self.writer
        for tag, value in flatten(data):
            writer.add_scalar(tag, value, global_step=step)
        writer.flush()

    def read_records(self) -> list[RoundEntry]:
        """Every record of metrics.jsonl, in the order written (zk0.records.latest_rounds keeps the ones
        that count)."""
        if not self.metrics_path.exists():
            return []
        lines = self.metrics_path.read_text().splitlines()
        return [RoundEntry.from_json(json.loads(line)) for line in lines if line.strip()]

    def recover_metrics(self, keep: Callable[[RoundEntry], bool] = lambda entry: True) -> list[RoundEntry]:
        """Make metrics.jsonl whole again before a run resumes, and return the entries dropped.

        A torn last line (a crash or a full disk mid-append) is dropped: the record it began belongs to a
        round that was not marked completed, so that round is redone. A damaged line before the last one is
        not a torn append: that stops with one line. Entries `keep` refuses are dropped too (the resuming
        command's records of rounds it will redo). The file is rewritten atomically, only if it changes.
        """
        if not self.metrics_path.exists():
            return []
        text = self.metrics_path.read_text(errors="replace")
        lines = text.split("\n")
        tail = lines.pop()  # "" after a complete last line, else the torn start of one
        entries, dropped = [], []
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                entry = RoundEntry.from_json(json.loads(line))
            except json.JSONDecodeError:
                if number < len(lines) or tail:
                    raise Zk0Error(
                        f"{self.metrics_path} line {number} is damaged (not a torn last line); "
                        "the run directory cannot be resumed"
                    ) from None
                tail = line
                continue
            (entries if keep(entry) else dropped).append(entry)
        if tail.strip():
            log.warning("%s: dropped a torn last line (%d bytes)", self.metrics_path, len(tail))
        if tail.strip() or dropped:
            body = "".join(json.dumps(e.to_json(), sort_keys=True) + "\n" for e in entries)
            write_atomic(self.metrics_path, body.encode())
        return dropped

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
