"""SIGINT and SIGTERM: stop every command within seconds, with one line and exit 130.

The handler raises `Interrupted` in the main thread and sets `STOP` for every other thread (simulate's
participants, which check it each training batch and between RPCs). `Interrupted` is a BaseException but not
a KeyboardInterrupt: `except Exception` never swallows it, and Lightning's fit re-raises it after tearing
down, where it would turn a KeyboardInterrupt into exit 1 with nothing on stderr.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

# Set by the first SIGINT/SIGTERM of this process; never cleared (a process is interrupted once).
STOP = threading.Event()


class Interrupted(BaseException):
    """The process was asked to stop (SIGINT or SIGTERM)."""


def _handle(signum: int, _frame) -> None:
    if STOP.is_set():  # a second signal while shutting down: the operator means now
        print(f"{os.path.basename(sys.argv[0])}: interrupted again, exiting now", file=sys.stderr, flush=True)
        os._exit(130)
    STOP.set()
    raise Interrupted(signal.Signals(signum).name)


def install_handlers() -> None:
    """Route SIGINT and SIGTERM to `Interrupted`; only the main thread may install signal handlers."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, _handle)
        signal.signal(signal.SIGTERM, _handle)


def check(stop: threading.Event) -> None:
    """Raise `Interrupted` once `stop` is set: for threads, which never receive the signal themselves."""
    if stop.is_set():
        raise Interrupted("stop requested")
