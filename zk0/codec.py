"""Trainable state <-> safetensors bytes, the manifest that describes it, and chunked transfer of the bytes.

A model version is the SHA-256 of its exact bytes, so encoding must be deterministic: safetensors orders
tensors by (dtype alignment, name) and writes no timestamps, and we never pass metadata. Never pickle.
Receivers fail closed: a payload whose size, offsets or hash disagree with what was declared is refused
with a `PayloadRejected` whose reason says exactly what was wrong.
"""

import hashlib
import json
import os
import tempfile
import weakref
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from types import TracebackType
from typing import Self

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load as _st_load
from safetensors.torch import save as _st_save
from safetensors.torch import save_file as _st_save_file

from zk0.errors import Zk0Error
from zk0.v1 import federation_pb2 as pb

# safetensors dtype codes -> torch dtypes; the manifest names dtypes the way torch does ("bfloat16").
_SAFETENSORS_DTYPES: dict[str, torch.dtype] = {
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
    str(dtype).removeprefix("torch."): dtype for dtype in _SAFETENSORS_DTYPES.values()
}
_HEX = frozenset("0123456789abcdef")


class PayloadRejected(Exception):
    """A received payload does not match what its sender declared; `reason` says how."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


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


def is_sha256_hex(value: str) -> bool:
    """True for a lowercase 64-digit hex string, the only form a version id takes."""
    return len(value) == 64 and set(value) <= _HEX


def sha256_hex(data: bytes | bytearray | memoryview) -> str:
    """Lowercase hex SHA-256; for a model payload this is its version id."""
    return hashlib.sha256(data).hexdigest()


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
        if isinstance(state, SpoolReader):
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
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.close(fd)
        _st_save_file(_prepared(state), tmp)
        fd = os.open(tmp, os.O_RDWR)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


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


def _layout(
    read: Callable[[int, int], bytes], size: int
) -> tuple[int, dict[str, tuple[torch.dtype, tuple[int, ...], int, int]]]:
    """A safetensors payload's data start and {name: (dtype, shape, start, end)}, offsets from that start."""
    if size < 8:
        raise PayloadRejected(f"not a valid safetensors payload: {size} bytes")
    length = int.from_bytes(read(0, 8), "little")
    if length > size - 8:
        raise PayloadRejected(f"not a valid safetensors payload: header of {length} bytes in {size} bytes")
    try:
        header = json.loads(read(8, length))
    except ValueError as err:
        raise PayloadRejected(f"not a valid safetensors payload: header: {err}") from err
    if not isinstance(header, dict):
        raise PayloadRejected("not a valid safetensors payload: header is not an object")
    base = 8 + length
    layout = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype = _SAFETENSORS_DTYPES[info["dtype"]]
            shape = tuple(int(dim) for dim in info["shape"])
            start, end = (int(offset) for offset in info["data_offsets"])
        except (KeyError, TypeError, ValueError) as err:
            raise PayloadRejected(f"not a valid safetensors payload: tensor {name!r}: {err!r}") from err
        numel = 1
        for dim in shape:
            numel *= dim
        if min(shape, default=0) < 0 or not 0 <= start <= end <= size - base:
            raise PayloadRejected(f"not a valid safetensors payload: tensor {name!r} lies outside the data")
        if end - start != numel * dtype.itemsize:
            raise PayloadRejected(
                f"not a valid safetensors payload: tensor {name!r}: {end - start} bytes for shape {shape}"
            )
        layout[name] = (dtype, shape, start, end)
    return base, layout


# ---------------------------------------------------------------------------------------- chunked transfer


def iter_chunks(
    data: bytes | bytearray | memoryview, chunk_bytes: int, start: int = 0
) -> Iterator[tuple[int, memoryview]]:
    """Yield (offset, view) pieces of data from byte `start` on, each at most chunk_bytes long (no copies)."""
    if chunk_bytes <= 0:
        raise ValueError(f"chunk_bytes must be > 0, got {chunk_bytes}")
    view = memoryview(data).cast("B")
    if not 0 <= start <= len(view):
        raise ValueError(f"start offset {start} outside the payload of {len(view)} bytes")
    for offset in range(start, len(view), chunk_bytes):
        yield offset, view[offset : offset + chunk_bytes]


class ModelFile:
    """A model version served from its file: downloads read their chunks from the page cache with pread.

    The coordinator keeps its global model on disk anyway (one file per round, never rewritten), so it
    holds no copy in memory: its RSS stays flat whatever the model size, and a chunk costs one read and one
    message per download. The version is the file's SHA-256, computed once when opening it. The descriptor
    stays open until `close()` (or garbage collection), so a file unlinked meanwhile is still served whole.
    """

    def __init__(self, path: Path, chunk_bytes: int) -> None:
        if chunk_bytes <= 0:
            raise ValueError(f"chunk_bytes must be > 0, got {chunk_bytes}")
        self.path = Path(path)
        self.chunk_bytes = chunk_bytes
        fd = os.open(self.path, os.O_RDONLY)
        self._closer = weakref.finalize(self, os.close, fd)
        self._fd = fd
        digest = hashlib.sha256()
        self.size = 0
        while piece := os.pread(fd, chunk_bytes, self.size):
            digest.update(piece)
            self.size += len(piece)
        self.version = digest.hexdigest()

    def __len__(self) -> int:
        return self.size

    def read(self, offset: int, length: int) -> bytes:
        """Bytes [offset, offset + length) of the payload (fewer at its end)."""
        pieces = []
        end = min(self.size, offset + length)
        while offset < end:
            piece = os.pread(self._fd, end - offset, offset)
            if not piece:
                raise Zk0Error(f"{self.path} is shorter than the {self.size} bytes it had when opened")
            pieces.append(piece)
            offset += len(piece)
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    def read_bytes(self) -> bytes:
        return self.read(0, self.size)

    def chunks(self, start: int = 0) -> Iterator[tuple[pb.DownloadModelResponse, int]]:
        """(message, data length) for each chunk from byte `start` on, cut as `iter_chunks` cuts them."""
        if not 0 <= start <= self.size:
            raise ValueError(f"start offset {start} outside the payload of {self.size} bytes")
        for offset in range(start, self.size, self.chunk_bytes):
            response = pb.DownloadModelResponse()
            response.chunk.offset = offset
            response.chunk.data = data = self.read(offset, self.chunk_bytes)
            yield response, len(data)

    def close(self) -> None:
        self._closer()


class _Receiver:
    """The checks shared by every assembler: ordered offsets, declared size and bound, running SHA-256."""

    def __init__(self, expected_size: int, expected_sha256: str, max_bytes: int) -> None:
        self.expected_size = expected_size
        self.expected_sha256 = expected_sha256
        self.max_bytes = max_bytes
        self.received = 0
        self._hash = hashlib.sha256()
        self._refused: str | None = None
        self._finished = False
        if expected_size < 0:
            self._refuse(f"declared size {expected_size} is negative")
        if expected_size > max_bytes:
            self._refuse(f"declared size {expected_size} bytes exceeds the bound of {max_bytes} bytes")
        if not is_sha256_hex(expected_sha256):
            self._refuse(f"declared sha256 {expected_sha256!r} is not 64 lowercase hex digits")

    def _refuse(self, reason: str) -> None:
        self._refused = reason
        self._on_refused()
        raise PayloadRejected(reason)

    def _on_refused(self) -> None:
        """Release what was received so far; subclasses with a temp file delete it."""

    def _check_open(self) -> None:
        if self._refused is not None:
            raise PayloadRejected(self._refused)
        if self._finished:
            raise RuntimeError("payload already finished")

    def add(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        """Accept the next chunk; refuses at once a gap, an overlap, an empty chunk or any overflow."""
        self._check_open()
        size = len(data)
        if offset != self.received:
            self._refuse(f"chunk at offset {offset}, expected offset {self.received}")
        if size == 0:
            self._refuse(f"empty chunk at offset {offset}")
        end = offset + size
        if end > self.expected_size:
            self._refuse(
                f"chunk at offset {offset} with {size} bytes overflows the declared size {self.expected_size}"
            )
        if end > self.max_bytes:
            self._refuse(
                f"chunk at offset {offset} with {size} bytes exceeds the bound of {self.max_bytes} bytes"
            )
        self._hash.update(data)
        self._store(data)
        self.received = end

    def _store(self, data: bytes | bytearray | memoryview) -> None:
        raise NotImplementedError

    def _verify(self) -> None:
        self._check_open()
        if self.received != self.expected_size:
            self._refuse(f"payload ended at {self.received} bytes, declared size {self.expected_size}")
        actual = self._hash.hexdigest()
        if actual != self.expected_sha256:
            self._refuse(
                f"sha256 mismatch: {self.received} bytes hash to {actual}, declared {self.expected_sha256}"
            )
        self._finished = True


class ChunkAssembler(_Receiver):
    """Collects an in-order chunk stream in memory (a participant pulling a model).

    To resume a broken download, request the stream again from `received` and keep feeding this assembler.
    """

    def __init__(self, expected_size: int, expected_sha256: str, max_bytes: int) -> None:
        self._chunks: list[bytes] = []
        super().__init__(expected_size, expected_sha256, max_bytes)

    def _store(self, data: bytes | bytearray | memoryview) -> None:
        self._chunks.append(bytes(data))

    def _on_refused(self) -> None:
        self._chunks.clear()

    def finish(self) -> bytes:
        """The whole payload once its size and SHA-256 match; PayloadRejected otherwise."""
        self._verify()
        data = b"".join(self._chunks)
        self._chunks.clear()
        return data


class FileAssembler(_Receiver):
    """Spools an in-order chunk stream to disk (the coordinator receiving updates: memory stays flat).

    Chunks go to a temp file beside `path`; `finish()` verifies, fsyncs and renames it to `path`, so `path`
    exists only with verified bytes. Use as a context manager: leaving without finish() deletes the temp file.
    """

    def __init__(self, path: Path, expected_size: int, expected_sha256: str, max_bytes: int) -> None:
        self.path = Path(path)
        self._file = None
        super().__init__(expected_size, expected_sha256, max_bytes)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".part")
        self._tmp = Path(tmp)
        self._file = os.fdopen(fd, "wb")

    def _store(self, data: bytes | bytearray | memoryview) -> None:
        assert self._file is not None
        self._file.write(data)

    def _on_refused(self) -> None:
        self.abort()

    def abort(self) -> None:
        """Drop the partial file; harmless after finish() or a refusal. The file goes even when closing it
        fails (a full disk refuses the buffered rest: that OSError propagates), so nothing is left behind."""
        if self._file is not None:
            file, self._file = self._file, None
            try:
                file.close()
            finally:
                self._tmp.unlink(missing_ok=True)

    def finish(self) -> Path:
        """Move the verified payload into place and return its path; PayloadRejected otherwise."""
        self._verify()
        assert self._file is not None
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self._file = None
        os.replace(self._tmp, self.path)
        _fsync_dir(self.path.parent)
        return self.path

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.abort()


# ---------------------------------------------------------------------------------------- files


def _fsync_dir(directory: Path) -> None:
    """Make a rename durable: the directory entry must reach the disk too."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes | bytearray | memoryview) -> None:
    """Write data so that `path` holds either its old content or all of data, even across a crash."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


class SpoolReader(Mapping[str, torch.Tensor]):
    """A safetensors file on disk seen as a read-only mapping that loads one tensor per lookup.

    Aggregation and validation walk a spooled update through this, so their memory holds one tensor of
    the update at a time, not the whole update. Metadata (`manifest()`) never loads tensor data. safetensors
    checks the file's layout when it is opened; each lookup then reads its tensor's bytes with pread into a
    fresh tensor, rather than through a memory map, whose touched pages would count in the process's RSS
    until the reader closed (a whole update's worth per reader).
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._fd: int | None = None
        try:
            self._handle = safe_open(str(self.path), framework="pt", device="cpu")
            self._names = tuple(sorted(self._handle.keys()))
        except SafetensorError as err:
            raise PayloadRejected(f"not a valid safetensors payload: {err}") from err
        self._fd = fd = os.open(self.path, os.O_RDONLY)
        try:
            read = lambda offset, length: os.pread(fd, length, offset)  # noqa: E731
            self._base, self._layout = _layout(read, os.fstat(fd).st_size)
        except BaseException:
            self.close()
            raise

    def spec(self, name: str) -> TensorSpec:
        piece = self._handle.get_slice(name)
        code = piece.get_dtype()
        if code not in _SAFETENSORS_DTYPES:
            raise PayloadRejected(f"tensor {name!r}: unsupported safetensors dtype {code}")
        return TensorSpec(name, dtype_name(_SAFETENSORS_DTYPES[code]), tuple(piece.get_shape()))

    def manifest(self) -> Manifest:
        return Manifest(tuple(self.spec(name) for name in self._names))

    def __getitem__(self, name: str) -> torch.Tensor:
        if name not in self._names:
            raise KeyError(name)
        spec = self.spec(name)
        dtype, shape, start, end = self._layout[name]
        if (dtype_name(dtype), shape) != (spec.dtype, spec.shape):
            raise PayloadRejected(f"tensor {name!r}: the header's dtype and shape read two ways")
        tensor = torch.empty(shape, dtype=dtype)
        if end > start:
            view = memoryview(tensor.reshape(-1).view(torch.uint8).numpy()).cast("B")
            done, offset = 0, self._base + start
            while done < len(view):
                assert self._fd is not None
                count = os.preadv(self._fd, [view[done:]], offset + done)
                if count == 0:
                    raise PayloadRejected(f"tensor {name!r}: the file ends inside its data")
                done += count
        return tensor

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)

    def __contains__(self, name: object) -> bool:
        return name in self._names

    def close(self) -> None:
        """Release the file."""
        self._handle = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
