"""`zk0-coordinator serve`: the aggregation host."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from zk0.console import add_config_args, quiet_libraries, run_command


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="zk0-coordinator", description="The zk0 aggregation host.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("serve", help="serve a federated run (resumes it when --run-dir already holds it)")
    add_config_args(p, default=None)
    p.add_argument("--run-dir", type=Path, required=True, help="the run directory (created, or resumed)")
    p.add_argument(
        "--overwrite", action="store_true", help="delete the run already in --run-dir and start afresh"
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=50051, help="port to listen on (default 50051; 0 = any free)")
    p.add_argument("--tls-cert", type=Path, help="server certificate (PEM)")
    p.add_argument("--tls-key", type=Path, help="server private key (PEM)")
    p.add_argument(
        "--tls-client-ca", type=Path, help="require client certificates signed by this CA (mutual TLS)"
    )
    p.add_argument("--tokens", type=Path, help="tokens file: one 'NAME TOKEN' per line")
    p.add_argument("--insecure", action="store_true", help="no TLS; only allowed on a loopback host")
    p.add_argument(
        "--allow-anonymous",
        action="store_true",
        help="serve off loopback without --tokens or --tls-client-ca: anyone who reaches the port may join",
    )
    p.add_argument("--device", default="auto", help="device for the coordinator's evaluation (default auto)")
    p.add_argument("--push-to-hub", metavar="REPO", help="upload final/ to this hub model repo at the end")
    p.add_argument(
        "--public", action="store_true", help="--push-to-hub creates a public repo (default: private)"
    )
    p.set_defaults(func=cmd_serve)
    return parser


def cmd_serve(args: argparse.Namespace) -> int:
    from coordinator.server import CoordinatorServer, ServerOptions
    from zk0.config import load_config
    from zk0.reuse import reuse_run_dir

    quiet_libraries()
    config = load_config(args.config, args.overrides)
    reuse = reuse_run_dir(args.run_dir, config, "federated", overwrite=args.overwrite)  # before any work
    if reuse.message:
        print(f"zk0-coordinator: {reuse.message}", flush=True)
    if reuse.action == "finished":
        return 0
    options = ServerOptions(
        host=args.host,
        port=args.port,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        tls_client_ca=args.tls_client_ca,
        tokens=args.tokens,
        insecure=args.insecure,
        device=args.device,
        push_to_hub=args.push_to_hub,
        allow_anonymous=args.allow_anonymous,
        public=args.public,
    )
    server = CoordinatorServer(config, args.run_dir, options)
    port = server.start()
    print(f"zk0-coordinator: serving on {args.host}:{port}", flush=True)
    try:
        server.wait()
    except BaseException:  # SIGINT/SIGTERM (zk0.interrupts) or an error: stop serving, keep the saved rounds
        server.stop()
        raise
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command(args.func, args, "zk0-coordinator")


if __name__ == "__main__":
    sys.exit(main())
