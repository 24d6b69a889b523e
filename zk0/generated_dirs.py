"""Directories generated once and cached on disk (the demo's datasets, the tiny VLM's assets).

A directory is built in a staging sibling and renamed into place, and it counts as built only once the
marker written last inside it matches the parameters it was built with: a crash, a concurrent builder or a
change of parameters never leaves a half-written or stale directory under the final name.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MARKER = "zk0_demo.json"


def is_complete(target: Path, params: dict[str, Any]) -> bool:
    """A directory counts only once its marker (written last, before the rename) matches `params`."""
    try:
        return json.loads((target / MARKER).read_text()) == params
    except FileNotFoundError:
        return False
    except (OSError, json.JSONDecodeError) as e:
        log.warning("ignoring unreadable demo marker %s (%s); regenerating", target / MARKER, e)
        return False


def write_marker(directory: Path, params: dict[str, Any]) -> None:
    (directory / MARKER).write_text(json.dumps(params, indent=2, sort_keys=True) + "\n")


@contextlib.contextmanager
def staging(target: Path) -> Iterator[Path]:
    """A fresh sibling directory to build into; on success it replaces `target` by rename, so a crash
    never leaves a half-written directory under the final name. Staging left by dead processes is removed."""
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_orphans(target)
    staging = target.parent / f".{target.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        yield staging
        _replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _replace(staging: Path, target: Path) -> None:
    stale = target.parent / f".{target.name}.stale-{os.getpid()}"
    if target.exists():
        target.rename(stale)
    try:
        staging.rename(target)
    except OSError:
        if not target.exists():
            raise
        log.info("%s was generated concurrently by another process; keeping that one", target)
    finally:
        shutil.rmtree(stale, ignore_errors=True)


def _remove_orphans(target: Path) -> None:
    for leftover in target.parent.glob(f".{target.name}.*-*"):
        pid = leftover.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(leftover, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
