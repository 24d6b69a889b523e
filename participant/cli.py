"""`zk0-participant`: a robot owner's GPU machine taking part in a run."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from zk0.console import quiet_libraries, run_command


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="zk0-participant", description="Take part in a zk0 federated run.")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.add_argument("--coordinator", required=True, metavar="HOST:PORT", help="the coordinator's address")
    p.add_argument(
        "--dataset", required=True, help="a local LeRobot dataset directory, a hub repo id, or demo:NAME"
    )
    p.add_argument(
        "--rename",
        action="append",
        default=[],
        metavar="OLD=NEW",
        help="map one of your dataset's observation names onto the run's (repeatable), "
        "e.g. observation.images.top=observation.images.front",
    )
    p.add_argument("--name", help="participant name (default: from the dataset); must match your token's")
    p.add_argument("--token", help="access token (default: $ZK0_TOKEN)")
    p.add_argument(
        "--tls-ca", type=Path, help="CA that signed the coordinator's certificate (default: system)"
    )
    p.add_argument("--tls-cert", type=Path, help="client certificate for mutual TLS")
    p.add_argument("--tls-key", type=Path, help="client key for mutual TLS")
    p.add_argument("--insecure", action="store_true", help="no TLS; only to a loopback coordinator")
    p.add_argument("--device", default="auto", help="cuda, cuda:N, cpu or auto (default)")
    p.add_argument(
        "--give-up-after",
        type=float,
        default=600.0,
        metavar="S",
        help="stop after S seconds of a refused or unreachable coordinator (default: %(default)g); a bad "
        "address, certificate or TLS/plaintext mismatch stops at once",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars (for logs)")
    p.set_defaults(func=cmd_participate)
    return p


def cmd_participate(args: argparse.Namespace) -> int:
    from participant.client import ClientOptions, ParticipantClient
    from zk0.data import dataset_name
    from zk0.rename import parse_rename

    quiet_libraries()
    rename = parse_rename(args.rename)
    options = ClientOptions(
        coordinator=args.coordinator,
        dataset=args.dataset,
        name=args.name or dataset_name(args.dataset),
        token=args.token or os.environ.get("ZK0_TOKEN"),
        tls_ca=args.tls_ca,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        insecure=args.insecure,
        device=args.device,
        give_up_s=args.give_up_after,
        progress=not args.no_progress,
        rename=rename,
    )
    ParticipantClient(options).run()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command(args.func, args, "zk0-participant")


if __name__ == "__main__":
    sys.exit(main())
