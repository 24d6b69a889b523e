"""A spooled safetensors file (an update received to disk, a saved global model) read tensor by tensor.

Aggregation and validation walk a spooled update through `SpoolReader`, so their memory holds one tensor
of the update at a time, not the whole update. The file's header is parsed here with the same fail-closed
checks a receiver applies: a layout that cannot be valid is a `PayloadRejected`.
"""

import json
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Self

import torch
from safetensors import SafetensorError, safe_open

from zk0.payload import PayloadRejected
from zk0.tensors import SAFETENSORS_DTYPES, Manifest, TensorSpec, dtype_name


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
            dtype = SAFETENSORS_DTYPES[info["dtype"]]
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


class SpoolReader(Mapping[str, torch.Tensor]):
    """A safetensors file on disk seen as a read-only mapping that loads one tensor per lookup.

    Metadata (`manifest()`) never loads tensor data, and `Manifest.of(reader)` uses it. safetensors checks
    the file's layout when it is opened; each lookup then reads its tensor's bytes with pread into a fresh
    tensor, rather than through a memory map, whose touched pages would count in the process's RSS until
    the reader closed (a whole update's worth per reader).
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
        if code not in SAFETENSORS_DTYPES:
            raise PayloadRejected(f"tensor {name!r}: unsupported safetensors dtype {code}")
        return TensorSpec(name, dtype_name(SAFETENSORS_DTYPES[code]), tuple(piece.get_shape()))

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
