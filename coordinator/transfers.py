"""Bounds on the coordinator's transfers (UploadUpdate, DownloadModel).

A transfer holds a server thread for as long as its stream is open, so an unbounded number of them (idle
streams opened by anyone, token or not) could take every thread and starve Join, Heartbeat and GetTask. Here
a transfer first takes one of `federation.max_transfers` slots, without waiting (the server's pool has these
slots plus CONTROL_WORKERS threads, so control calls always find a thread); a watchdog cancels an upload
whose header has not arrived within `header_timeout_s`, and any transfer that moved no bytes for
`transfer_idle_timeout_s`. Progress, never elapsed time, decides: a slow but moving transfer is never cut.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import grpc

from zk0.config import FederationConfig

log = logging.getLogger(__name__)

# Threads beyond the transfer slots: control calls, and the refusals of transfers over the bound.
CONTROL_WORKERS = 8


@dataclass
class Transfer:
    """One admitted transfer: what the watchdog knows of it."""

    kind: str  # "upload" | "download"
    peer: str
    context: grpc.ServicerContext
    last_progress: float
    started: bool = False  # an upload's first message (its header) arrived; a download's first send
    reading: bool = True  # False once an upload's stream is fully read: the coordinator's own work follows
    cancelled: str = ""


def overdue(transfer: Transfer, now: float, header_timeout_s: float, idle_timeout_s: float) -> str:
    """Why the watchdog must cancel `transfer` now ('' if it must not): pure, for the tests."""
    if not transfer.reading or transfer.cancelled:
        return ""
    idle = now - transfer.last_progress
    if transfer.kind == "upload" and not transfer.started:
        if idle > header_timeout_s:
            return f"no header within {header_timeout_s:g}s"
        return ""
    if idle > idle_timeout_s:
        return f"no bytes moved for {idle_timeout_s:g}s"
    return ""


class TransferGate:
    """The slots and the watchdog. `admit` never blocks: a transfer over the bound is refused at once."""

    def __init__(
        self,
        max_transfers: int,
        header_timeout_s: float,
        idle_timeout_s: float,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_transfers = max_transfers
        self.header_timeout_s = header_timeout_s
        self.idle_timeout_s = idle_timeout_s
        self.clock = clock
        self._lock = threading.Lock()
        self._transfers: dict[int, Transfer] = {}
        self._closed = threading.Event()
        self._watchdog: threading.Thread | None = None

    @classmethod
    def from_config(cls, fed: FederationConfig) -> TransferGate:
        return cls(fed.max_transfers, fed.header_timeout_s, fed.transfer_idle_timeout_s)

    @property
    def in_progress(self) -> int:
        with self._lock:
            return len(self._transfers)

    def admit(self, kind: str, context: grpc.ServicerContext) -> Transfer | None:
        """A slot for a new transfer, or None when all `max_transfers` are taken."""
        with self._lock:
            if len(self._transfers) >= self.max_transfers:
                return None
            transfer = Transfer(kind, context.peer(), context, self.clock())
            self._transfers[id(transfer)] = transfer
            if self._watchdog is None and not self._closed.is_set():
                self._watchdog = threading.Thread(
                    target=self._watch, name="zk0-transfer-watchdog", daemon=True
                )
                self._watchdog.start()
        return transfer

    def release(self, transfer: Transfer) -> None:
        """Idempotent: called when the handler ends and again by gRPC's termination callback."""
        with self._lock:
            self._transfers.pop(id(transfer), None)

    def progress(self, transfer: Transfer) -> None:
        transfer.started = True
        transfer.last_progress = self.clock()

    def watch_requests(self, transfer: Transfer, requests: Iterator) -> Iterator:
        """The upload's messages, each one that carries bytes (or is the header) counting as progress."""
        for message in requests:
            if not transfer.started or message.WhichOneof("kind") != "chunk" or message.chunk.data:
                self.progress(transfer)
            yield message
        transfer.reading = False

    def sweep(self) -> list[Transfer]:
        """Cancel every overdue transfer; returns them (the watchdog calls this; tests may too)."""
        now = self.clock()
        with self._lock:
            due = [
                (t, why)
                for t in self._transfers.values()
                if (why := overdue(t, now, self.header_timeout_s, self.idle_timeout_s))
            ]
            for t, why in due:
                t.cancelled = why
        for t, why in due:
            log.warning("cancelled an idle %s from %s: %s", t.kind, t.peer, why)
            t.context.cancel()
        return [t for t, _ in due]

    def _watch(self) -> None:
        period = min(1.0, max(0.05, min(self.header_timeout_s, self.idle_timeout_s) / 4))
        while not self._closed.wait(period):
            self.sweep()

    def close(self) -> None:
        """Stop the watchdog and cancel whatever transfer is still open: part of a bounded shutdown."""
        self._closed.set()
        if self._watchdog is not None:
            self._watchdog.join(timeout=5)
        with self._lock:
            left = list(self._transfers.values())
        for t in left:
            t.context.cancel()
