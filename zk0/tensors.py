"""Trainable state <-> safetensors bytes, and the manifest that describes it.

A model version is the SHA-256 of its exact bytes, so encoding must be deterministic: safetensors orders
tensors by (dtype alignment, name) and writes no timestamps, and we never pass metadata. Never pickle.
"""

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch
from safetensors import SafetensorError
from safetensors.torch import load as _st_load
from safetensors.torch import save as _st_save
from safetensors.torch import save_file as _st_save_file

from zk0.atomic_files import write_atomic_with
from zk0.payload import PayloadRejected
from zk0.v1 import federation_pb2 as pb

# safetensors dtype codes -> torch dtypes; the manifest names dtypes the way torch does ("bfloat16").
SAFETENSORS_DTYPES: dict[str, torch.dtype] = {
    "BOOL": torch.bool,
    "U8": torch.uint8,
    "I8": torch.int8,
    "I16": torch.int16,
    "U16": torch.uint16,
    "I32": torch.int32,
    "U32": torch.uint32,
    "I64": torch.int64,
    "U64": torch.uint64,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F32": torch.float32,
    "F64": torch.float64,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}
_DTYPES_BY_NAME: dict[str, torch.dtype] = {
    str(dtype).removeprefix("torch."): dtype for dtype in SAFETENSORS_DTYPES.values()
}


def dtype_name(dtype: torch.dtype) -> str:
    """The manifest's name for a torch dtype, e.g. torch.bfloat16 -> "bfloat16"."""
    name = str(dtype).removeprefix("torch.")
    if name not in _DTYPES_BY_NAME:
        raise ValueError(f"dtype {name} cannot travel in safetensors")
    return name


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype for a manifest dtype name; ValueError for names safetensors cannot carry."""
    try:
        return _DTYPES_BY_NAME[name]
    except KeyError:
        raise ValueError(f"unknown dtype {name!r}") from None


# ---------------------------------------------------------------------------------------- manifest


@dataclass(frozen=True)
class TensorSpec:
    """Name, dtype (torch name) and shape of one tensor."""

    name: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        count = 1
        for dim in self.shape:
            count *= dim
        return count

    @property
    def num_bytes(self) -> int:
        return self.numel * torch_dtype(self.dtype).itemsize

    @classmethod
    def of(cls, name: str, tensor: torch.Tensor) -> "TensorSpec":
        return cls(name, dtype_name(tensor.dtype), tuple(tensor.shape))


@runtime_checkable
class DescribedState(Protocol):
    """A state that states its own manifest without loading its tensors (a spooled file on disk)."""

    def manifest(self) -> "Manifest": ...


@dataclass(frozen=True)
class Manifest:
    """Every tensor of a trainable state, sorted by name so equal states have equal manifests."""

    tensors: tuple[TensorSpec, ...]

    def __post_init__(self) -> None:
        names = [spec.name for spec in self.tensors]
        if len(set(names)) != len(names):
            duplicates = sorted({name for name in names if names.count(name) > 1})
            raise ValueError(f"duplicate tensor names in manifest: {duplicates}")
        if names != sorted(names):
            object.__setattr__(self, "tensors", tuple(sorted(self.tensors, key=lambda s: s.name)))

    @classmethod
    def of(cls, state: Mapping[str, torch.Tensor]) -> "Manifest":
        """The manifest of an in-memory state, or of a spooled file without loading its tensors."""
        if isinstance(state, DescribedState):
            return state.manifest()
        return cls(tuple(TensorSpec.of(name, tensor) for name, tensor in state.items()))

    @cached_property
    def by_name(self) -> dict[str, TensorSpec]:
        return {spec.name: spec for spec in self.tensors}

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(spec.name for spec in self.tensors)

    @property
    def num_bytes(self) -> int:
        """Bytes of tensor data (the encoded payload adds a small JSON header)."""
        return sum(spec.num_bytes for spec in self.tensors)

    @property
    def numel(self) -> int:
        return sum(spec.numel for spec in self.tensors)

    def __len__(self) -> int:
        return len(self.tensors)

    def __iter__(self) -> Iterator[TensorSpec]:
        return iter(self.tensors)

    def to_proto(self) -> pb.TensorManifest:
        return pb.TensorManifest(
            tensors=[pb.TensorSpec(name=s.name, dtype=s.dtype, shape=s.shape) for s in self.tensors]
        )

    @classmethod
    def from_proto(cls, message: pb.TensorManifest) -> "Manifest":
        """Parse a received manifest; ValueError names the first tensor that cannot be valid."""
        specs = []
        for spec in message.tensors:
            if not spec.name:
                raise ValueError("manifest has a tensor with an empty name")
            if spec.dtype not in _DTYPES_BY_NAME:
                raise ValueError(f"manifest tensor {spec.name!r}: unknown dtype {spec.dtype!r}")
            if any(dim < 0 for dim in spec.shape):
                raise ValueError(f"manifest tensor {spec.name!r}: negative dimension in {tuple(spec.shape)}")
            specs.append(TensorSpec(spec.name, spec.dtype, tuple(spec.shape)))
        return cls(tuple(specs))


# ---------------------------------------------------------------------------------------- encode / decode


def encode_state(state: Mapping[str, torch.Tensor]) -> bytes:
    """Serialize tensors as safetensors bytes: CPU, contiguous, native dtype; same tensors -> same bytes.

    Tensors that share storage (tied weights) are cloned, since safetensors refuses aliases and each name
    must travel with its own values.
    """
    return _st_save(_prepared(state))


def write_state_atomic(path: Path, state: Mapping[str, torch.Tensor]) -> None:
    """Write exactly the bytes `encode_state(state)` returns to `path`, as `write_atomic` does.

    safetensors writes the file tensor by tensor, so no payload-sized buffer is built in memory (encoding
    to bytes first costs two payloads' worth at its peak).
    """
    write_atomic_with(path, lambda tmp: _st_save_file(_prepared(state), tmp))


def _prepared(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    prepared: dict[str, torch.Tensor] = {}
    seen_storages: set[int] = set()
    for name in sorted(state):
        tensor = state[name].detach().to("cpu").contiguous()
        storage = tensor.untyped_storage().data_ptr()
        if storage in seen_storages and tensor.numel() > 0:
            tensor = tensor.clone()
        seen_storages.add(tensor.untyped_storage().data_ptr())
        prepared[name] = tensor
    return prepared


def decode_state(data: bytes) -> dict[str, torch.Tensor]:
    """Parse safetensors bytes into CPU tensors, sorted by name; PayloadRejected if they are not valid."""
    try:
        loaded = _st_load(bytes(data))
    except SafetensorError as err:
        raise PayloadRejected(f"not a valid safetensors payload: {err}") from err
    return {name: loaded[name] for name in sorted(loaded)}
