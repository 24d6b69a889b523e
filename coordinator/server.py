"""The coordinator process: builds (or resumes) the global model, serves gRPC, drives rounds, evaluates,
records metrics and exports the final model."""

from __future__ import annotations

import logging
import threading
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc

from coordinator import strategies
from coordinator.adaptive import Decision, records_from_metrics
from coordinator.guard import CallGuard
from coordinator.rounds import Coordinator, RoundState
from coordinator.service import FederationService, read_tokens
from coordinator.store import RunStore
from coordinator.transfers import CONTROL_WORKERS, TransferGate
from zk0 import hub
from zk0.atomic_files import write_atomic
from zk0.charts import write_charts
from zk0.config import Config, config_to_toml
from zk0.data import describe
from zk0.errors import Zk0Error, disk_full
from zk0.evaluation import describe_eval, evaluate_all, evaluation_setup
from zk0.normalization import stats_to_json
from zk0.payload import sha256_hex
from zk0.policy import (
    export_pretrained,
    frozen_fingerprint,
    load_trainable_state,
    resolve_device,
    trainable_state,
)
from zk0.records import Best, Evaluation, RoundEntry
from zk0.report import model_card
from zk0.tensors import Manifest, decode_state, encode_state
from zk0.transport import GRPC_OPTIONS, is_loopback, server_credentials
from zk0.v1 import federation_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

BEST_DIR = "best"
# Shutdown is bounded whatever the clients do: calls get this long to end before they are cancelled, the
# server this long more to stop, the round driver this long to notice the stop.
SHUTDOWN_GRACE_S = 2.0
SHUTDOWN_WAIT_S = 10.0
# Calls beyond this many at once are refused by gRPC itself (RESOURCE_EXHAUSTED): a bound on the queue a
# flood of connections can build, far above what the transfer slots and the participants need.
MAX_CONCURRENT_RPCS = 1000
# Server-side keepalive: a peer that vanished without closing its connection is found and its calls ended.
KEEPALIVE_OPTIONS = [("grpc.keepalive_time_ms", 30_000), ("grpc.keepalive_timeout_ms", 10_000)]


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
    push_to_hub: str | None = None
    allow_anonymous: bool = False
    public: bool = False  # --push-to-hub creates a private repository unless this says public

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
        if self.public and not self.push_to_hub:
            raise Zk0Error("--public only says how --push-to-hub creates its repository; pass --push-to-hub")
        if self.insecure and not is_loopback(self.host):
            raise Zk0Error(f"--insecure serves only on a loopback host, not {self.host}; use TLS")
        # TLS alone encrypts but admits anyone who reaches the port: off loopback that must be a choice.
        anonymous = self.tokens is None and self.tls_client_ca is None
        if anonymous and not is_loopback(self.host) and not self.allow_anonymous:
            raise Zk0Error(
                f"serving on {self.host} without --tokens or --tls-client-ca admits anyone who can reach the "
                "port; pass --tokens or --tls-client-ca, or --allow-anonymous if that is intended"
            )


class CoordinatorServer:
    def __init__(self, config: Config, run_dir: Path, options: ServerOptions) -> None:
        options.check()
        if options.push_to_hub:
            hub.check_can_push(options.push_to_hub)  # before any training, not after
        self.config = config
        self.options = options
        self.tokens = read_tokens(options.tokens) if options.tokens else None
        self.device = resolve_device(options.device)
        self.stop_event = threading.Event()
        self.error: BaseException | None = None
        self._prepare(run_dir)

    def _prepare(self, run_dir: Path) -> None:
        config = self.config
        self.bundle, self.eval_sets = evaluation_setup(config, device=self.device)
        self.eval_descriptions = {name: describe(d.meta) for name, d in self.eval_sets.items()}
        self.store, resumed = RunStore.open(run_dir, config)
        initial = trainable_state(self.bundle.policy)
        run_meta = next(iter(self.eval_sets.values())).meta  # the policy's features come from it
        self.strategy = strategies.make(config)
        self.coordinator = Coordinator(
            config,
            self.store,
            Manifest.of(initial),
            self.strategy,
            features=run_meta.features,
            fps=float(run_meta.fps),
        )
        completed = self.store.completed() if resumed else None
        if completed is None:  # round 0 is the initial model, completed like any round once recorded
            data = encode_state(initial)
            write_atomic(self.store.model_path(0), data)
            self.coordinator.set_global(0, data, sha256_hex(data))
            self._after_round(0, RoundEntry(round=0, version=sha256_hex(data)))
        else:
            round_idx, version, data = completed
            self.coordinator.set_global(round_idx, data, version)
            self.strategy.load_server_state(self.store.server_state(round_idx))
            load_trainable_state(self.bundle.policy, self.coordinator.global_state())
            log.info("resuming %s after round %d (global model %s)", self.store.path, round_idx, version[:12])
            self._apply(self._decide(self.store.run.read_records()), round_idx)
        self.service = FederationService(
            self.coordinator,
            tokens=self.tokens,
            config_toml=config_to_toml(config),
            frozen_sha256=frozen_fingerprint(self.bundle.policy),
            normalization_json=(
                stats_to_json(next(iter(self.eval_sets.values())).meta.stats)
                if config.data.normalization == "coordinator"
                else ""
            ),
            require_cert_name=self.options.tls_client_ca is not None,
        )

    def _after_round(self, round_idx: int, entry: RoundEntry) -> None:
        """Evaluate the new global model (when due), keep it if best, decide the next round's
        hyperparameters from the whole history, record everything, and apply the decision."""
        if self.config.eval.due(round_idx, self.config.federation.rounds):
            entry.eval = Evaluation.from_json(evaluate_all(self.bundle, self.eval_sets, self.config.eval))
            log.info("round %d: %s", round_idx, describe_eval(entry))
            loss = entry.eval.loss
            best = self.store.best()
            if best is None or loss < best[0]["loss"]:
                self.store.save_best(round_idx, entry.version, loss)
        best = self.store.best()
        if best is not None:
            entry.best = Best.from_json(best[0])
        decision = self._decide([*self.store.run.read_records(), entry])
        if self.adaptive_on:
            entry.adaptive = decision.to_record()
            for rule in decision.rules:
                log.info("round %d: %s", round_idx, rule)
        self.store.run.record(entry, step=round_idx)
        # Completed only once recorded: a crash before this line redoes the round (RunStore.recover drops
        # its record), so every completed round has exactly one record of its aggregation.
        self.store.mark_completed(round_idx, entry.version, self.coordinator.global_size)
        write_charts(self.store.run.read_records(), self.store.path)
        self._apply(decision, round_idx)

    @property
    def adaptive_on(self) -> bool:
        a = self.config.adaptive
        return a.mu_dynamic or a.lr_adjust or a.lr_boost or a.spike_guard

    def _decide(self, entries: list[RoundEntry]) -> Decision:
        strategy = self.strategy
        return strategy.plan(
            records_from_metrics(entries, base_mu=strategy.base_mu, base_lr=strategy.base_lr)
        )

    def _apply(self, decision: Decision, round_idx: int) -> None:
        self.coordinator.set_plan(decision)
        best = self.store.best()
        if decision.rollback and best is not None and best[0]["version"] != self.coordinator.global_version:
            record, data = best
            log.warning(
                "round %d: spike guard rolls back to the best model (round %d)", round_idx, record["round"]
            )
            self.coordinator.roll_back(round_idx, data, record["version"])
            load_trainable_state(self.bundle.policy, self.coordinator.global_state())

    def _on_round(self, round_idx: int, state: RoundState, entry: RoundEntry) -> None:
        load_trainable_state(self.bundle.policy, self.coordinator.global_state())
        self._after_round(round_idx, entry)

    def start(self) -> int:
        """Serve with max_transfers + CONTROL_WORKERS threads: transfers can never take the threads that
        answer Join, Heartbeat and GetTask."""
        fed = self.config.federation
        self.transfers = TransferGate.from_config(fed)
        self.guard = CallGuard(self.transfers)
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=fed.max_transfers + CONTROL_WORKERS),
            interceptors=[self.guard],
            options=GRPC_OPTIONS + KEEPALIVE_OPTIONS,
            maximum_concurrent_rpcs=MAX_CONCURRENT_RPCS,
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

    def _finish_run(self) -> None:
        """Export the last and the best global models with a model card, and push when asked to."""
        run = self.store.run
        entries = run.read_records()
        export_pretrained(self.bundle, run.final_dir)
        best = self.store.best()
        if best is not None:
            record, data = best
            load_trainable_state(self.bundle.policy, decode_state(data))
            export_pretrained(self.bundle, run.path / BEST_DIR)
            load_trainable_state(self.bundle.policy, self.coordinator.global_state())
        card = model_card(
            config_toml=config_to_toml(self.config),
            entries=entries,
            participants=self.store.participants(),
            eval_datasets=self.eval_descriptions,
            base_model=self.config.model.source,
            final_version=self.coordinator.global_version,
            best=best[0] if best else None,
        )
        (run.final_dir / "README.md").write_text(card)
        write_charts(entries, run.path)
        log.info("run complete: final model in %s, best in %s", run.final_dir, run.path / BEST_DIR)
        if self.options.push_to_hub:
            url = hub.push_folder(run.final_dir, self.options.push_to_hub, private=not self.options.public)
            log.info("pushed %s to %s", run.final_dir, url)
        run.mark_finished()  # last: a rerun of this command now reports the run instead of redoing this

    def _drive(self) -> None:
        try:
            self.coordinator.run(
                self.stop_event, self._on_round, lambda r, entry: self.store.run.record(entry, step=r)
            )
            if not self.stop_event.is_set():
                self._finish_run()
        except BaseException as e:  # noqa: BLE001 - handed to the thread that waits, which re-raises it
            self.error = disk_full(e, self.store.path) or e
            log.error("coordinator stopped: %s", e)

    def wait(self, timeout: float | None = None) -> None:
        """Block until the run is over; participants get a grace period to hear 'done' before shutdown."""
        self.driver.join(timeout)
        if self.driver.is_alive():
            self.stop_event.set()  # the caller's time is up: the driver notices within a poll
            self.driver.join(SHUTDOWN_WAIT_S)
        self.coordinator.wait_until_told(self.config.federation.lease_s)
        self._shut_down()
        if self.error is not None:
            raise self.error

    def stop(self) -> None:
        self.stop_event.set()
        self.driver.join(SHUTDOWN_WAIT_S)
        self._shut_down()

    def _shut_down(self) -> None:
        """Bounded: open transfers are cancelled, the rest get SHUTDOWN_GRACE_S, and a server that still
        has not stopped SHUTDOWN_WAIT_S later is left behind with a warning rather than waited for."""
        self.transfers.close()
        if not self.server.stop(grace=SHUTDOWN_GRACE_S).wait(SHUTDOWN_GRACE_S + SHUTDOWN_WAIT_S):
            log.warning("the gRPC server did not stop within %.0fs; exiting anyway", SHUTDOWN_WAIT_S)
        self.guard.refusals.flush()
        if self.driver.is_alive():
            log.warning("the round driver did not stop within %.0fs; exiting anyway", SHUTDOWN_WAIT_S)
        self.store.run.close()
