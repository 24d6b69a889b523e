"""Chunked transfer of a payload's bytes: cutting it into chunks, serving a model from its file, and the
receivers that reassemble a chunk stream in memory or on disk.

Receivers fail closed: a stream whose size, offsets or hash disagree with what was declared is refused with
a `PayloadRejected` whose reason says exactly what was wrong, at the first chunk that shows it.
"""

import hashlib
import os
import tempfile
import weakref
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Self

from zk0.atomic_files import fsync_dir
from zk0.errors import Zk0Error
from zk0.payload import PayloadRejected, is_sha256_hex
from zk0.v1 import federation_pb2 as pb


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
        fsync_dir(self.path.parent)
        return self.path

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.abort()
