"""`zk0`: the command line. It only parses arguments and calls: the runs themselves live in zk0.simulate,
zk0.centralized and zk0.compare_runs (imported inside each subcommand, so `zk0 --help` stays quick)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from zk0.console import add_config_args, quiet_libraries, run_command
from zk0.records import RoundEntry


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command(args.func, args, "zk0")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="zk0", description="Federated fine-tuning of SmolVLA.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("centralized", help="train one model on the union of the participants' datasets")
    add_config_args(p)
    p.add_argument("--run-dir", type=Path, help="where to write the run (default: runs/centralized-<time>)")
    p.add_argument("--device", help="device to train and evaluate on (default: train.device)")
    p.add_argument(
        "--overwrite", action="store_true", help="delete the run already in --run-dir and start afresh"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars (for logs)")
    p.set_defaults(func=cmd_centralized)

    p = sub.add_parser(
        "simulate",
        help="a coordinator and one participant per configured dataset, in one process over loopback gRPC",
    )
    add_config_args(p)
    p.add_argument("--run-dir", type=Path, help="where to write the run (default: runs/simulate-<time>)")
    p.add_argument(
        "--overwrite", action="store_true", help="delete the run already in --run-dir and start afresh"
    )
    p.add_argument(
        "--device", help="device for every participant and the coordinator (default: train.device)"
    )
    p.add_argument("--push-to-hub", metavar="REPO", help="upload final/ to this hub model repo at the end")
    p.add_argument(
        "--public", action="store_true", help="--push-to-hub creates a public repo (default: private)"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars (for logs)")
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser(
        "compare",
        help="federated (FedAvg, FedProx, ...) vs centralized vs each participant alone, equal step budgets",
    )
    add_config_args(p)
    p.add_argument(
        "--strategies",
        type=strategy_list,
        default=("fedavg", "fedprox"),
        help="comma-separated strategies to train, one federated row each (default: fedavg,fedprox;"
        " fedadam/fedyogi run with federation.server_lr = 1, as they step with strategy.eta)",
    )
    p.add_argument(
        "--out", type=Path, help="where to write the runs and the table (default: runs/compare-<time>)"
    )
    p.add_argument(
        "--overwrite", action="store_true", help="delete the run already in --out and start afresh"
    )
    p.add_argument("--device", help="device for every run (default: train.device)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (for logs)")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("demo-data", help="generate the embedded demo's tiny VLM assets and datasets")
    add_config_args(p)
    p.add_argument("--out", type=Path, help="demo directory (default: the config's demo.root)")
    p.set_defaults(func=cmd_demo_data)
    return parser


def default_run_dir(kind: str) -> Path:
    return Path("runs") / f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}"


def cmd_centralized(args: argparse.Namespace) -> int:
    from zk0.centralized import run_centralized
    from zk0.config import load_config

    quiet_libraries()
    config = load_config(args.config, args.overrides)
    run_dir = args.run_dir or default_run_dir("centralized")
    if finished(run_dir, config, "centralized", args.overwrite):
        return 0
    history = run_centralized(config, run_dir, progress=not args.no_progress, device=args.device)
    print_eval_table(history)
    print(f"run directory: {run_dir}")
    return 0


def finished(run_dir: Path, config, kind: str, overwrite: bool) -> bool:
    """The run-directory rule (zk0.reuse), before any work: True (said in one line) when `run_dir` already
    holds this finished run; raises Zk0Error when it holds another."""
    from zk0.reuse import reuse_run_dir

    reuse = reuse_run_dir(run_dir, config, kind, overwrite=overwrite)
    if reuse.message:
        print(f"zk0: {reuse.message}", flush=True)
    return reuse.action == "finished"


def cmd_simulate(args: argparse.Namespace) -> int:
    from zk0.config import load_config
    from zk0.simulate import simulate

    quiet_libraries()
    config = load_config(args.config, args.overrides)
    run_dir = args.run_dir or default_run_dir("simulate")
    if finished(run_dir, config, "federated", args.overwrite):
        return 0
    device = args.device or config.train.device
    history = simulate(
        config,
        run_dir,
        device=device,
        progress=not args.no_progress,
        push_to_hub=args.push_to_hub,
        public=args.public,
    )
    print_eval_table(history)
    print(f"run directory: {run_dir}")
    return 0


def print_eval_table(history: list[RoundEntry]) -> None:
    """Round by round: the composite held-out loss and action error, and each dataset's loss."""
    evaluated = [e for e in history if e.eval is not None]
    names = list(evaluated[0].eval.datasets)
    print("\nglobal model on the held-out evaluation data:")
    print(f"  {'round':>5}  {'loss':>9}  {'action MAE':>10}  " + "  ".join(f"{n:>12}" for n in names))
    for entry in evaluated:
        ev = entry.eval
        mae = ev.composite.get("action_mae", float("nan"))
        per = "  ".join(f"{ev.datasets[n]['loss']:>12.4f}" for n in names)
        print(f"  {entry.round:>5}  {ev.loss:>9.4f}  {mae:>10.4f}  {per}")


def strategy_list(text: str) -> tuple[str, ...]:
    from zk0.config import STRATEGIES

    names = tuple(name.strip() for name in text.split(",") if name.strip())
    unknown = [name for name in names if name not in STRATEGIES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"{', '.join(unknown) or text!r}: not among {', '.join(STRATEGIES)}")
    return names


def cmd_compare(args: argparse.Namespace) -> int:
    from zk0.compare_runs import run_compare
    from zk0.config import load_config

    quiet_libraries()
    config = load_config(args.config, args.overrides)
    out = args.out or default_run_dir("compare")
    if finished(out, config, "compare", args.overwrite):
        return 0
    report = run_compare(
        args.config,
        args.overrides,
        out,
        device=args.device,
        progress=not args.no_progress,
        strategies=args.strategies,
    )
    print("\n" + report)
    print(f"written to {out / 'compare.md'}")
    return 0


def cmd_demo_data(args: argparse.Namespace) -> int:
    from zk0.config import load_config
    from zk0.data import open_source
    from zk0.tiny_vlm import ensure_vlm_assets

    quiet_libraries()  # lerobot's per-video "Using video codec" lines
    overrides = [*args.overrides, f'demo.root="{args.out}"'] if args.out else args.overrides
    config = load_config(args.config, overrides)
    print(f"tiny VLM assets: {ensure_vlm_assets(Path(config.demo.root))}")
    for spec in [*config.data.participants, *config.data.eval]:
        if spec.startswith("demo:"):
            source = open_source(spec, config)
            meta = source.meta
            print(f"{spec}: {source.ref.root} ({meta.total_episodes} episodes, {meta.total_frames} frames)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
