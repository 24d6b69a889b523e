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
        help="federated (FedAvg, FedProx) vs centralized vs each participant alone, equal step budgets",
    )
    add_config_args(p)
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
    from participant.centralized import run_centralized
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


def simulate(
    config,
    run_dir: Path,
    *,
    device: str,
    progress: bool,
    push_to_hub: str | None = None,
    public: bool = False,
) -> list[dict]:
    """The coordinator's gRPC server on 127.0.0.1 (ephemeral port) and one participant client per configured
    dataset, each in a thread of this process, training one after another on the one device.

    An interrupt (or any error) in the waiting main thread stops the server and sets `stop`, which every
    participant thread checks each batch and between RPCs; the threads are joined before it propagates, so
    no thread is left inside torch or gRPC at exit. The run directory keeps the last completed round."""
    import logging
    import threading

    from coordinator.server import CoordinatorServer, ServerOptions
    from participant.client import ClientOptions, ParticipantClient, participant_name
    from zk0.interrupts import Interrupted

    options = ServerOptions(
        host="127.0.0.1", insecure=True, device=device, push_to_hub=push_to_hub, public=public
    )
    server = CoordinatorServer(config, run_dir, options)
    port = server.start()
    train_lock = threading.Lock()
    stop = threading.Event()
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
            ParticipantClient(options, train_lock=train_lock, stop=stop).run()
        except Interrupted:
            return  # the main thread is stopping the run and reports it
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
    except BaseException:
        stop.set()
        server.stop()
        raise
    finally:
        stop.set()  # the run is over: a participant still waiting for a task need not wait out its lease
        for thread in threads:
            thread.join(timeout=60)
    if errors and len(errors) == len(threads):
        raise errors[0]
    return server.store.run.read_metrics()


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


def cmd_compare(args: argparse.Namespace) -> int:
    import json

    from participant.centralized import run_centralized
    from zk0.compare import Row, score, table, trainable_from, verdict
    from zk0.config import load_config
    from zk0.evaluation import evaluation_setup
    from zk0.policy import resolve_device, trainable_state
    from zk0.reuse import reuse_run_dir
    from zk0.rundir import CONFIG_FILE, RunDir

    quiet_libraries()
    config = load_config(args.config, args.overrides)
    out = args.out or default_run_dir("compare")
    if finished(out, config, "compare", args.overwrite):
        return 0
    if not (out / CONFIG_FILE).exists():
        RunDir.create(out, config, kind="compare")
    device = resolve_device(args.device or config.train.device)
    progress = not args.no_progress
    fed, steps = config.federation, config.train.local_steps * config.train.batch_size  # samples/round
    participants = len(config.data.participants)

    def variant(*overrides: str):
        return load_config(args.config, [*args.overrides, *overrides])

    bundle, eval_sets = evaluation_setup(config, device=device)
    rows = [
        score(
            Row("initial model", "initial", 0), trainable_state(bundle.policy), bundle, eval_sets, config.eval
        )
    ]
    for strategy in ("fedavg", "fedprox"):
        run, run_config = out / strategy, variant(f'federation.strategy="{strategy}"')
        if reuse_run_dir(run, run_config, "federated").action == "finished":  # a resumed comparison
            history = RunDir(run).read_metrics()
        else:
            history = simulate(run_config, run, device=device, progress=progress)
        last = max(e["round"] for e in history if "version" in e)
        state = trainable_from(run / "models" / f"round-{last:04d}.safetensors", bundle.policy)
        row = Row(f"federated {strategy}", "federated", participants * fed.rounds * steps)
        rows.append(score(row, state, bundle, eval_sets, config.eval))
    if reuse_run_dir(out / "centralized", config, "centralized").action != "finished":
        run_centralized(config, out / "centralized", progress=progress, device=device)
    state = trainable_from(out / "centralized" / "final" / "model.safetensors", bundle.policy)
    row = Row("centralized", "centralized", participants * fed.rounds * steps)
    rows.append(score(row, state, bundle, eval_sets, config.eval))
    for spec in config.data.participants:
        name = spec.removeprefix("demo:").rstrip("/").rsplit("/", 1)[-1]
        run, run_config = out / f"local-{name}", variant(f'data.participants=["{spec}"]')
        if reuse_run_dir(run, run_config, "centralized").action != "finished":
            run_centralized(run_config, run, progress=progress, device=device)
        state = trainable_from(run / "final" / "model.safetensors", bundle.policy)
        rows.append(
            score(Row(f"{name} alone", "local", fed.rounds * steps), state, bundle, eval_sets, config.eval)
        )

    checks = verdict(rows)
    report = (
        table(rows) + "\n\n" + "\n".join(f"- [{'x' if ok else ' '}] {text}" for ok, text in checks) + "\n"
    )
    (out / "compare.md").write_text(report)
    (out / "compare.json").write_text(
        json.dumps(
            {"rows": [vars(r) for r in rows], "checks": [{"held": ok, "check": t} for ok, t in checks]},
            indent=2,
        )
    )
    RunDir(out).mark_finished()
    print("\n" + report)
    print(f"written to {out / 'compare.md'}")
    return 0


def cmd_demo_data(args: argparse.Namespace) -> int:
    from zk0.config import load_config
    from zk0.sources import open_source
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
