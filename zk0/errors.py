"""One exception type for every problem a user can fix: the CLI prints it as one line and exits 2."""

from __future__ import annotations

import errno
from pathlib import Path


class Zk0Error(Exception):
    """A user-facing error: bad config, bad dataset, unreachable hub. The message is the whole story."""


NO_SPACE = "No space left on device"


def disk_full(error: BaseException, run_dir: Path | None = None) -> Zk0Error | None:
    """The one line for an operator when a write failed for want of space (None for any other error):
    every write of a run directory is atomic or recovered on resume, so freeing space and rerunning the
    same command resumes the run."""
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        where = f" writing {error.filename}" if error.filename else ""
    elif NO_SPACE in str(error):  # safetensors' writer reports the OS error inside its own exception
        where = ""
    else:
        return None
    run = f"the run directory {run_dir} is consistent: " if run_dir is not None else ""
    return Zk0Error(f"no space left on the device{where}; {run}free space and rerun the same command")
