"""`zk0`: the command line. This module is the composition root: the one place in zk0/ allowed to import
coordinator/ and participant/, and only inside the subcommands that wire them together."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from zk0.console import add_config_args, quiet_libraries, run_command


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
    p.add_argument("--no-progress", action="store_true", help="no progress bars (for logs)")
    p.set_defaults(func=cmd_centralized)

    p = sub.add_parser(
        "simulate",
        help="a coordinator and one participant per configured dataset, in one process over loopback gRPC",
    )
    add_config_args(p)
    p.add_argument("--run-dir", type=Path, help="where to write the run (default: runs/simulate-<time>)")
    p.add_argument(
        "--device", help="device for every participant and the coordinator (default: train.device)"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars (for logs)")
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser("demo-data", help="generate the embedded demo's tiny VLM assets and datasets")
    add_config_args(p)
    p.add_argument("--out", type=Path, help="demo directory (default: the config's demo.root)")
    p.set_defaults(func=cmd_demo_data)
    return parser


def default_run_dir(kind: str) -> Path:
    return Path("runs") / f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}"


def cmd_centralized(args: argparse.Namespace) -> int:
    from participant.centralized import run_centralized
    from zk0.config import load_config

    quiet_libraries()
    config = load_config(args.config, args.overrides)
    run_dir = args.run_dir or default_run_dir("centralized")
    history = run_centralized(config, run_dir, progress=not args.no_progress)
    print_eval_table(history)
    print(f"run directory: {run_dir}")
    return 0


def simulate(config, run_dir: Path, *, device: str, progress: bool) -> list[dict]:
    """The coordinator's gRPC server on 127.0.0.1 (ephemeral port) and one participant client per configured
    dataset, each in a thread of this process, training one after another on the one device."""
    import logging
    import threading

    from coordinator.server import CoordinatorServer, ServerOptions
    from participant.client import ClientOptions, ParticipantClient, participant_name

    server = CoordinatorServer(config, run_dir, ServerOptions(host="127.0.0.1", insecure=True, device=device))
    port = server.start()
    train_lock = threading.Lock()
    errors: list[BaseException] = []

    def take_part(spec: str) -> None:
        options = ClientOptions(
            coordinator=f"127.0.0.1:{port}",
            dataset=spec,
            name=participant_name(spec),
            insecure=True,
            device=device,
            progress=progress,
            give_up_s=30.0,
        )
        try:
            ParticipantClient(options, train_lock=train_lock).run()
        except Exception as e:  # noqa: BLE001 - reported; the run stops once no participant is left
            logging.getLogger("zk0.simulate").error("participant %s failed: %s", spec, e)
            errors.append(e)
            if len(errors) == len(config.data.participants):
                server.stop_event.set()

    threads = [
        threading.Thread(target=take_part, args=(spec,), name=f"zk0-participant-{i}", daemon=True)
        for i, spec in enumerate(config.data.participants)
    ]
    for thread in threads:
        thread.start()
    try:
        server.wait()
    finally:
        for thread in threads:
            thread.join(timeout=60)
    if errors and len(errors) == len(threads):
        raise errors[0]
    return server.store.run.read_metrics()


def cmd_simulate(args: argparse.Namespace) -> int:
    from zk0.config import load_config

    quiet_libraries()
    config = load_config(args.config, args.overrides)
    run_dir = args.run_dir or default_run_dir("simulate")
    history = simulate(
        config, run_dir, device=args.device or config.train.device, progress=not args.no_progress
    )
    print_eval_table(history)
    print(f"run directory: {run_dir}")
    return 0


def print_eval_table(history: list[dict]) -> None:
    """Round by round: the composite held-out loss and action error, and each dataset's loss."""
    evaluated = [e for e in history if "eval" in e]
    names = list(evaluated[0]["eval"]["datasets"])
    print("\nglobal model on the held-out evaluation data:")
    print(f"  {'round':>5}  {'loss':>9}  {'action MAE':>10}  " + "  ".join(f"{n:>12}" for n in names))
    for entry in evaluated:
        ev = entry["eval"]
        mae = ev["composite"].get("action_mae", float("nan"))
        per = "  ".join(f"{ev['datasets'][n]['loss']:>12.4f}" for n in names)
        print(f"  {entry['round']:>5}  {ev['composite']['loss']:>9.4f}  {mae:>10.4f}  {per}")


def cmd_demo_data(args: argparse.Namespace) -> int:
    from zk0.config import load_config
    from zk0.demo import ensure_vlm_assets
    from zk0.sources import open_source

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
