"""What every console script shares: logging set-up, and turning user errors into one line and exit 2."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

from zk0.errors import Zk0Error, disk_full
from zk0.interrupts import Interrupted, install_handlers


def run_command(func: Callable[[argparse.Namespace], int | None], args: argparse.Namespace, prog: str) -> int:
    setup_logging(getattr(args, "verbose", False))
    quiet_progress_bars()
    install_handlers()
    try:
        return func(args) or 0
    except Zk0Error as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:
        full = disk_full(e)  # an operator's problem too: one line, and the run resumes once space is freed
        if full is None:
            raise
        print(f"{prog}: error: {full}", file=sys.stderr)
        return 2
    except (Interrupted, KeyboardInterrupt):
        print(f"{prog}: interrupted", file=sys.stderr, flush=True)
        return 130


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def quiet_libraries() -> None:
    """Lightning sets its loggers to INFO with their own handler when imported: keep warnings only."""
    import lightning.pytorch  # noqa: F401 - imported first, so its logger set-up cannot undo ours

    for name in ("lightning.pytorch", "lightning.fabric", "lerobot.configs.video", "httpx", "urllib3", "PIL"):
        logger = logging.getLogger(name)
        logger.setLevel(logging.WARNING)
        logger.handlers.clear()
        logger.propagate = True
    if not sys.stderr.isatty():
        import datasets

        datasets.disable_progress_bars()


def quiet_progress_bars() -> None:
    """Without a terminal, datasets' "Generating train split" bars are noise in a log file. lerobot's
    SuppressProgressBars turns them back on when it exits, so disable_progress_bars() does not last; this
    variable has priority over both, and datasets reads it once, when first imported: so this runs before
    any command imports anything."""
    if not sys.stderr.isatty():
        os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
        warnings.filterwarnings("ignore", "Cannot enable progress bars", UserWarning)  # lerobot's re-enable


def add_config_args(p: argparse.ArgumentParser, *, default: Path | None = Path("configs/demo.toml")) -> None:
    p.add_argument("--config", type=Path, default=default, required=default is None, help="TOML config file")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one config value (repeatable), e.g. --set train.local_steps=5",
    )
