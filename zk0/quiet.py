"""lerobot prints to stdout while it builds a SmolVLA ("Reducing the number of VLM layers to N ..."), once per
model: four times in a simulate, mixed into stdout, which holds a command's results. Builds run inside
`library_prints_logged_once()`, which logs each distinct printed line once per process instead."""

from __future__ import annotations

import contextlib
import io
import logging
import threading
from collections.abc import Iterator

log = logging.getLogger("lerobot")

_LOCK = threading.Lock()  # redirect_stdout swaps a process-wide stream: one redirect at a time
_SEEN: set[str] = set()


@contextlib.contextmanager
def library_prints_logged_once() -> Iterator[None]:
    with _LOCK:
        buffer = io.StringIO()
        try:
            with contextlib.redirect_stdout(buffer):
                yield
        finally:
            for line in buffer.getvalue().splitlines():
                if line.strip() and line not in _SEEN:
                    _SEEN.add(line)
                    log.info("%s", line.strip())
