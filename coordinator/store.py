"""The federated run's directory: global model per round, spooled updates, resume state.

Layout (beside RunDir's config.toml, metrics.jsonl, tensorboard/, final/):
    models/round-0003.safetensors       global trainable state after round 3 (round 0: the initial model)
    state.json                          {"completed_round": 3, "version": sha256, "size": bytes}
    models/best.safetensors, best.json  the best global model so far by composite evaluation loss
    updates/round-0004/NAME.safetensors an accepted (verified, validated) update of the round in progress
    updates/round-0004/accepted.jsonl   their headers, one per line, written after the file is in place

Every file is written to a temporary name and renamed, and state.json moves last, so a coordinator killed
at any instant restarts from a consistent round with every accepted update of the next one.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path

import torch

from zk0.atomic_files import write_atomic
from zk0.config import Config
from zk0.errors import Zk0Error
from zk0.payload import sha256_hex
from zk0.records import latest_rounds
from zk0.reuse import STATE_FILE, completed_round, reuse_run_dir
from zk0.rundir import RunDir
from zk0.tensors import decode_state, write_state_atomic
from zk0.validation import UpdateHeader

log = logging.getLogger(__name__)

BEST_FILE = "best.json"
PARTICIPANTS_FILE = "participants.json"
BEST_MODEL = "best.safetensors"
ACCEPTED_FILE = "accepted.jsonl"


class RunStore:
    def __init__(self, run: RunDir) -> None:
        self.run = run
        self.path = run.path
        self._participants: dict[str, dict] | None = None  # participants.json as last written

    @classmethod
    def open(cls, path: Path, config: Config) -> tuple[RunStore, bool]:
        """Create a run directory, or reopen one this config started (returns resumed=True), by the rule
        of `zk0.reuse.reuse_run_dir`; a reopened one is first made consistent (`recover`)."""
        path = Path(path)
        reuse = reuse_run_dir(path, config, "federated")
        if reuse.action == "finished":
            raise Zk0Error(reuse.message)
        if reuse.action == "fresh":
            return cls(RunDir.create(path, config, kind="federated")), False
        store = cls(RunDir(path))
        store.recover()
        return store, True

    def recover(self) -> None:
        """Make a reopened run directory consistent before it resumes after a crash (SIGKILL, full disk):
        drop the temp files of interrupted writes and uploads, metrics.jsonl's torn last line and the
        records of rounds state.json does not count as completed (those rounds are redone from their kept
        accepted updates), and re-derive the best model from the records that remain."""
        leftovers = [*self.path.glob(".*.tmp"), *self.path.glob("models/.*.tmp")]
        leftovers += [*self.path.glob("updates/*/.*.part"), *self.path.glob("updates/*/.*.tmp")]
        for leftover in leftovers:
            log.warning("removing %s, left by an interrupted write or upload", leftover)
            leftover.unlink()
        done = completed_round(self.path)
        dropped = self.run.recover_metrics(keep=lambda e: not e.aggregated or e.round <= done)
        for entry in dropped:
            log.warning(
                "round %d: its record was written but the round never marked completed: redoing it",
                entry.round,
            )
        self._recover_best(done)

    def _recover_best(self, done: int) -> None:
        """best.json and models/best.safetensors as the kept records say (the lowest composite evaluation
        loss, earliest first, as `CoordinatorServer._after_round` keeps it)."""
        derived = None
        for round_idx, entry in latest_rounds(self.run.read_records()).items():
            if round_idx > done or entry.eval is None:
                continue
            if derived is None or entry.eval.loss < derived["loss"]:
                derived = {"round": round_idx, "version": entry.version, "loss": entry.eval.loss}
        best_json, best_model = self.path / BEST_FILE, self.path / "models" / BEST_MODEL
        recorded = json.loads(best_json.read_text()) if best_json.exists() else None
        if derived is None:
            best_json.unlink(missing_ok=True)
            best_model.unlink(missing_ok=True)
            return
        if (
            recorded == derived
            and best_model.exists()
            and sha256_hex(best_model.read_bytes()) == derived["version"]
        ):
            return
        source = self.model_path(derived["round"])
        if not source.exists() or sha256_hex(source.read_bytes()) != derived["version"]:
            raise Zk0Error(
                f"{source} does not hold the model recorded for round {derived['round']}; "
                "the run directory is damaged"
            )
        log.warning("best model: round %d, as the records say (it was %s)", derived["round"], recorded)
        self.save_best(derived["round"], derived["version"], derived["loss"])

    def model_path(self, round_idx: int) -> Path:
        return self.path / "models" / f"round-{round_idx:04d}.safetensors"

    def round_dir(self, round_idx: int) -> Path:
        return self.path / "updates" / f"round-{round_idx:04d}"

    def update_path(self, round_idx: int, participant: str) -> Path:
        return self.round_dir(round_idx) / f"{participant}.safetensors"

    def save_global(self, round_idx: int, data: bytes) -> str:
        """Persist the global model of a completed round, then mark the round completed."""
        version = sha256_hex(data)
        write_atomic(self.model_path(round_idx), data)
        self.mark_completed(round_idx, version, len(data))
        return version

    def write_global(self, round_idx: int, state: Mapping[str, torch.Tensor]) -> Path:
        """Persist a round's global model from its tensors (streamed to disk, never encoded in memory);
        the round counts as completed only once `mark_completed` records the file's hash."""
        path = self.model_path(round_idx)
        write_state_atomic(path, state)
        return path

    def server_state_path(self, round_idx: int) -> Path:
        return self.path / "models" / f"round-{round_idx:04d}.strategy.safetensors"

    def write_server_state(self, round_idx: int, state: Mapping[str, torch.Tensor]) -> None:
        """A stateful strategy's state after a round (e.g. FedAdam's moments), beside the round's model."""
        write_state_atomic(self.server_state_path(round_idx), state)

    def server_state(self, round_idx: int) -> dict[str, torch.Tensor] | None:
        """The strategy state saved with `round_idx`'s model; None when the strategy keeps none."""
        path = self.server_state_path(round_idx)
        return decode_state(path.read_bytes()) if path.exists() else None

    def mark_completed(self, round_idx: int, version: str, size: int) -> None:
        state = {"completed_round": round_idx, "version": version, "size": size}
        write_atomic(self.path / STATE_FILE, (json.dumps(state) + "\n").encode())

    def completed(self) -> tuple[int, str, bytes] | None:
        """(round, version, bytes) of the last completed round, bytes checked against the recorded hash."""
        state_path = self.path / STATE_FILE
        if not state_path.exists():
            return None
        state = json.loads(state_path.read_text())
        round_idx, version = int(state["completed_round"]), state["version"]
        data = self.model_path(round_idx).read_bytes()
        if sha256_hex(data) != version:
            raise Zk0Error(
                f"{self.model_path(round_idx)} does not match the hash recorded in {STATE_FILE}; "
                "the run directory is damaged"
            )
        return round_idx, version, data

    def save_best(self, round_idx: int, version: str, loss: float) -> dict:
        """Keep the best global model so far (by composite evaluation loss) beside the per-round ones."""
        write_atomic(self.path / "models" / BEST_MODEL, self.model_path(round_idx).read_bytes())
        best = {"round": round_idx, "version": version, "loss": loss}
        write_atomic(self.path / BEST_FILE, (json.dumps(best) + "\n").encode())
        return best

    def best(self) -> tuple[dict, bytes] | None:
        """The best model's record and bytes, checked against its recorded hash."""
        if not (self.path / BEST_FILE).exists():
            return None
        best = json.loads((self.path / BEST_FILE).read_text())
        data = (self.path / "models" / BEST_MODEL).read_bytes()
        if sha256_hex(data) != best["version"]:
            raise Zk0Error(f"models/{BEST_MODEL} does not match {BEST_FILE}; the run directory is damaged")
        return best, data

    def record_participant(self, name: str, dataset: dict) -> None:
        """Who took part with which dataset (its description, never its data), for the model card."""
        self.record_participants({name: dataset})

    def record_participants(self, datasets: Mapping[str, dict]) -> None:
        """Add participants that take part (sampled into a round), in one write, and only on a change:
        a join storm of names that never take part never reaches the disk."""
        if self._participants is None:
            self._participants = self.participants()
        changed = {n: d for n, d in datasets.items() if self._participants.get(n) != d}
        if changed:
            self._participants.update(changed)
            text = json.dumps(self._participants, indent=1) + "\n"
            write_atomic(self.path / PARTICIPANTS_FILE, text.encode())

    def participants(self) -> dict[str, dict]:
        path = self.path / PARTICIPANTS_FILE
        return json.loads(path.read_text()) if path.exists() else {}

    def record_accepted(self, round_idx: int, header: UpdateHeader) -> None:
        # The session id is a live credential of the participant's process: it never goes to disk.
        record = {**asdict(header), "metrics": dict(header.metrics)}
        del record["session_id"]
        line = json.dumps(record, sort_keys=True)
        with (self.round_dir(round_idx) / ACCEPTED_FILE).open("a") as f:
            f.write(line + "\n")

    def accepted(self, round_idx: int) -> list[tuple[UpdateHeader, Path]]:
        """The updates already accepted for a round (on resume), each still matching its recorded hash."""
        listing = self.round_dir(round_idx) / ACCEPTED_FILE
        if not listing.exists():
            return []
        found: dict[str, tuple[UpdateHeader, Path]] = {}
        for line in listing.read_text().splitlines():
            if not line.strip():
                continue
            header = UpdateHeader(**json.loads(line))
            path = self.update_path(round_idx, header.participant_id)
            if path.exists() and sha256_hex(path.read_bytes()) == header.sha256:
                found[header.participant_id] = (header, path)
        return list(found.values())
