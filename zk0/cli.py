"""`zk0`: the command line. This module is the composition root: the one place in zk0/ allowed to import
coordinator/ and participant/, and only inside the subcommands that wire them together."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

from zk0.errors import Zk0Error

log = logging.getLogger("zk0")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    try:
        return args.func(args) or 0
    except Zk0Error as e:
        print(f"zk0: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("zk0: interrupted", file=sys.stderr)
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="zk0", description="Federated fine-tuning of SmolVLA.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("centralized", help="train one model on the union of the participants' datasets")
    add_config_args(p)
    p.add_argument("--run-dir", type=Path, help="where to write the run (default: runs/centralized-<time>)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (for logs)")
    p.set_defaults(func=cmd_centralized)

    p = sub.add_parser("demo-data", help="generate the embedded demo's tiny VLM assets and datasets")
    add_config_args(p)
    p.add_argument("--out", type=Path, help="demo directory (default: the config's demo.root)")
    p.set_defaults(func=cmd_demo_data)
    return parser


def add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, default=Path("configs/demo.toml"), help="TOML config file")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one config value (repeatable), e.g. --set train.local_steps=5",
    )


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def quiet_libraries() -> None:
    """Lightning sets its loggers to INFO with their own handler when imported: keep warnings only."""
    for name in ("lightning.pytorch", "lightning.fabric", "lerobot.configs.video", "httpx", "urllib3", "PIL"):
        logger = logging.getLogger(name)
        logger.setLevel(logging.WARNING)
        logger.handlers.clear()
        logger.propagate = True


def default_run_dir(kind: str) -> Path:
    return Path("runs") / f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}"


def cmd_centralized(args: argparse.Namespace) -> int:
    from participant.centralized import run_centralized
    from zk0.config import load_config

    quiet_libraries()
    config = load_config(args.config, args.overrides)
    run_dir = args.run_dir or default_run_dir("centralized")
    history = run_centralized(config, run_dir, progress=not args.no_progress)
    first, last = history[0]["eval"], history[-1]["eval"]
    print(f"\nheld-out loss, round 0 -> round {history[-1]['round']}:")
    for name in first:
        print(f"  {name:<24} {first[name]:.4f} -> {last[name]:.4f}")
    print(f"run directory: {run_dir}")
    return 0


def cmd_demo_data(args: argparse.Namespace) -> int:
    from zk0.config import load_config
    from zk0.demo import ensure_demo_dataset, ensure_vlm_assets

    config = load_config(args.config, args.overrides)
    root = args.out or Path(config.demo.root)
    vlm = ensure_vlm_assets(root)
    print(f"tiny VLM assets: {vlm}")
    for spec in [*config.data.participants, *config.data.eval]:
        if spec.startswith("demo:"):
            path = ensure_demo_dataset(
                root,
                spec.removeprefix("demo:"),
                seed=config.demo.seed,
                episodes=config.demo.episodes,
                frames_per_episode=config.demo.frames_per_episode,
            )
            print(f"{spec}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
