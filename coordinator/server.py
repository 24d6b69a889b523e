"""The coordinator process: builds (or resumes) the global model, serves gRPC, drives rounds, evaluates,
records metrics and exports the final model."""

from __future__ import annotations

import logging
import threading
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc
import torch
from lerobot.datasets.factory import resolve_delta_timestamps

from coordinator.rounds import Coordinator, RoundState
from coordinator.service import FederationService, read_tokens
from coordinator.store import RunStore
from zk0.codec import Manifest, encode_state
from zk0.config import Config, config_to_toml
from zk0.data import open_dataset
from zk0.errors import Zk0Error
from zk0.evaluation import describe_eval, evaluate_all
from zk0.policy import (
    build_policy,
    export_pretrained,
    frozen_fingerprint,
    load_trainable_state,
    resolve_device,
    trainable_state,
)
from zk0.sources import check_same_layout, demo_root, open_source
from zk0.transport import GRPC_OPTIONS, is_loopback, server_credentials
from zk0.v1 import federation_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)


@dataclass
class ServerOptions:
    host: str = "127.0.0.1"
    port: int = 0
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    tokens: Path | None = None
    insecure: bool = False
    device: str = "auto"
    workers: int = 16

    def check(self) -> None:
        tls = self.tls_cert is not None or self.tls_key is not None
        if tls and (self.tls_cert is None or self.tls_key is None):
            raise Zk0Error("--tls-cert and --tls-key go together")
        if self.tls_client_ca is not None and not tls:
            raise Zk0Error("--tls-client-ca (mutual TLS) needs --tls-cert and --tls-key")
        if tls and self.insecure:
            raise Zk0Error("--insecure contradicts --tls-cert/--tls-key")
        if not tls and not self.insecure:
            raise Zk0Error("no TLS: pass --tls-cert and --tls-key, or --insecure on a loopback host")
        if self.insecure and not is_loopback(self.host):
            raise Zk0Error(f"--insecure serves only on a loopback host, not {self.host}; use TLS")


class CoordinatorServer:
    def __init__(self, config: Config, run_dir: Path, options: ServerOptions) -> None:
        options.check()
        self.config = config
        self.options = options
        self.tokens = read_tokens(options.tokens) if options.tokens else None
        self.device = resolve_device(options.device)
        self.stop_event = threading.Event()
        self.error: BaseException | None = None
        self._prepare(run_dir)

    def _prepare(self, run_dir: Path) -> None:
        config = self.config
        if not config.data.eval:
            raise Zk0Error("data.eval: the coordinator needs at least one evaluation dataset")
        eval_sources = [open_source(spec, config) for spec in config.data.eval]
        check_same_layout(eval_sources)
        self.store, resumed = RunStore.open(run_dir, config)
        torch.manual_seed(config.seed)  # the tiny demo's frozen backbone is this seed's random init
        first = eval_sources[0].meta
        self.bundle = build_policy(
            config.model, first, first.stats, device=self.device, demo_root=demo_root(config)
        )
        delta = resolve_delta_timestamps(self.bundle.policy.config, first)
        self.eval_sets = {
            s.name: open_dataset(s.ref, episodes=None, delta_timestamps=delta) for s in eval_sources
        }
        initial = trainable_state(self.bundle.policy)
        self.coordinator = Coordinator(config, self.store, Manifest.of(initial))
        completed = self.store.completed() if resumed else None
        if completed is None:
            data = encode_state(initial)
            version = self.store.save_global(0, data)
            self.coordinator.set_global(0, data, version)
            self._record(0, {"round": 0, "version": version})
        else:
            round_idx, version, data = completed
            self.coordinator.set_global(round_idx, data, version)
            load_trainable_state(self.bundle.policy, self.coordinator.global_state())
            log.info("resuming %s after round %d (global model %s)", self.store.path, round_idx, version[:12])
        self.service = FederationService(
            self.coordinator,
            tokens=self.tokens,
            config_toml=config_to_toml(config),
            frozen_sha256=frozen_fingerprint(self.bundle.policy),
        )

    def _record(self, round_idx: int, entry: dict) -> None:
        if self.config.eval.due(round_idx, self.config.federation.rounds):
            entry["eval"] = evaluate_all(self.bundle, self.eval_sets, self.config.eval)
            log.info("round %d: %s", round_idx, describe_eval(entry))
        self.store.run.record(entry, step=round_idx)

    def _on_round(self, round_idx: int, state: RoundState, entry: dict) -> None:
        load_trainable_state(self.bundle.policy, self.coordinator.global_state())
        self._record(round_idx, entry)

    def start(self) -> int:
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=self.options.workers), options=GRPC_OPTIONS
        )
        pb_grpc.add_FederationServicer_to_server(self.service, self.server)
        address = f"{self.options.host}:{self.options.port}"
        if self.options.insecure:
            self.port = self.server.add_insecure_port(address)
        else:
            creds = server_credentials(
                self.options.tls_cert, self.options.tls_key, self.options.tls_client_ca
            )
            self.port = self.server.add_secure_port(address, creds)
        if self.port == 0:
            raise Zk0Error(f"cannot listen on {address} (in use, or not an address of this host)")
        self.server.start()
        self.driver = threading.Thread(target=self._drive, name="zk0-rounds", daemon=True)
        self.driver.start()
        log.info(
            "coordinator listening on %s:%d (%s), run directory %s",
            self.options.host,
            self.port,
            "insecure" if self.options.insecure else "TLS",
            self.store.path,
        )
        return self.port

    def _drive(self) -> None:
        try:
            self.coordinator.run(self.stop_event, self._on_round)
            if not self.stop_event.is_set():
                export_pretrained(self.bundle, self.store.run.final_dir)
                log.info("run complete: final model in %s", self.store.run.final_dir)
        except BaseException as e:  # noqa: BLE001 - handed to the thread that waits, which re-raises it
            self.error = e
            log.error("coordinator stopped: %s", e)

    def wait(self, timeout: float | None = None) -> None:
        """Block until the run is over; participants get a grace period to hear 'done' before shutdown."""
        self.driver.join(timeout)
        self.coordinator.wait_until_told(self.config.federation.lease_s)
        self.server.stop(grace=2.0).wait()
        self.store.run.close()
        if self.error is not None:
            raise self.error

    def stop(self) -> None:
        self.stop_event.set()
        self.driver.join()
        self.server.stop(grace=1.0).wait()
        self.store.run.close()
