"""The global model the coordinator serves: its round, version and file. Served from the store's file (never
held in memory), hashed once when adopted; downloads ask for it by version, so a participant holding an older
version is told so instead of receiving a mix."""

from __future__ import annotations

import threading
from pathlib import Path

import torch

from coordinator.store import RunStore
from zk0.atomic_files import write_atomic
from zk0.errors import Zk0Error
from zk0.spool import SpoolReader
from zk0.transfer import ModelFile


class GlobalModel:
    def __init__(self, store: RunStore, chunk_bytes: int) -> None:
        self.store, self.chunk_bytes = store, chunk_bytes
        self._lock = threading.Lock()
        self.round, self.version = 0, ""
        self._file: ModelFile | None = None

    def open(self, round_idx: int, data: bytes, version: str) -> None:
        """Make `data` (version `version`) the global model of `round_idx`, served from the store's file for
        that round (`RunStore.save_global` writes it; written here if missing)."""
        path = self.store.model_path(round_idx)
        if not path.exists():
            write_atomic(path, data)
        model = ModelFile(path, self.chunk_bytes)
        if model.version != version:
            model.close()
            raise Zk0Error(
                f"{path} does not hold global model {version[:12]} (it hashes to {model.version[:12]})"
            )
        self._swap(round_idx, model)

    def roll_back(self, round_idx: int, data: bytes, version: str) -> None:
        """Serve `data` (the best model so far) after `round_idx`: the spike guard's rollback. It gets a file
        of its own, since the round's file holds the model it replaces."""
        path = self.store.model_path(round_idx).with_suffix(".rollback.safetensors")
        write_atomic(path, data)
        model = ModelFile(path, self.chunk_bytes)
        if model.version != version:
            model.close()
            raise Zk0Error(f"{path} does not hold the best model {version[:12]}")
        self._swap(round_idx, model)

    def adopt(self, round_idx: int, path: Path) -> str:
        """Serve the aggregate just written to `path` as `round_idx`'s model; its version (SHA-256)."""
        model = ModelFile(path, self.chunk_bytes)
        self._swap(round_idx, model)
        return model.version

    def _swap(self, round_idx: int, model: ModelFile) -> None:
        with self._lock:
            self.round, self._file, self.version = round_idx, model, model.version

    @property
    def path(self) -> Path:
        assert self._file is not None, "no global model yet"
        return self._file.path

    @property
    def size(self) -> int:
        return self._file.size if self._file is not None else 0

    def read_bytes(self) -> bytes:
        return self._file.read_bytes() if self._file is not None else b""

    def state(self) -> dict[str, torch.Tensor]:
        """The tensors, sorted by name, read from the file one tensor at a time."""
        with SpoolReader(self.path) as reader:
            return {name: reader[name] for name in reader}

    def serving(self, version: str) -> ModelFile:
        """The model file if `version` is still the global version (KeyError otherwise): for downloads."""
        with self._lock:
            if version != self.version or self._file is None:
                raise KeyError(version)
            return self._file
