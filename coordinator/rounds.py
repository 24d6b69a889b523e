"""The coordinator's round state machine: membership with leases, sampling, collecting validated updates,
aggregating, and the deadlines around each of them.

The gRPC servicer calls in from its worker threads (join, heartbeat, task_for, receive_update, ...); one
driver thread runs `run()`. All shared state sits behind one lock with a condition variable that wakes the
driver whenever something it waits for may have changed.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from coordinator.adaptive import Decision
from coordinator.aggregation import reusable_sums
from coordinator.global_model import GlobalModel
from coordinator.intake import evaluation_problem, keep_attempt, spool_attempt
from coordinator.membership import Member, Membership, public_source, waiting_line
from coordinator.round_state import (
    POLL_SECONDS,
    WAITING_LOG_S,
    RoundState,
    RunStopped,
    Task,
    TaskKind,
    attempt_record,
)
from coordinator.screening import complete_distances, screened_aggregate
from coordinator.store import RunStore
from coordinator.strategies import Aggregate, RoundUpdates, Strategy
from zk0.config import Config
from zk0.errors import Zk0Error
from zk0.records import RoundEntry
from zk0.tensors import Manifest
from zk0.transfer import ModelFile
from zk0.validation import Refusal, UpdateHeader, UpdateRejected, validate_update

log = logging.getLogger(__name__)

__all__ = ["POLL_SECONDS", "Coordinator", "RoundState", "RunStopped", "Task", "TaskKind"]


class Coordinator:
    def __init__(
        self,
        config: Config,
        store: RunStore,
        manifest: Manifest,
        strategy: Strategy,
        *,
        clock: Callable[[], float] = time.monotonic,
        features: dict | None = None,
        fps: float = 0.0,
    ) -> None:
        """`strategy` plans and aggregates the rounds (coordinator/strategies/).

        `features` and `fps`: the run's dataset features (its evaluation datasets'), which a joining
        participant's must match (coordinator/features.py); None admits any dataset."""
        self.config = config
        self.fed = config.federation
        self.store = store
        self.manifest = manifest
        self.clock = clock
        self.max_update_bytes = self.fed.max_update_mib * 1024 * 1024
        self.chunk_bytes = self.fed.chunk_kib * 1024
        self.run_id = store.path.name
        self._cond = threading.Condition()
        self.membership = Membership(self.fed, clock(), features=features, fps=fps)
        self._members: dict[str, Member] = self.membership.table
        self._round: RoundState | None = None
        self._done = False
        self._done_reason = ""
        self._told_done: set[str] = set()
        self.strategy = strategy
        self.plan = strategy.plan([])
        self.model = GlobalModel(store, self.chunk_bytes)
        self._spare_sums: dict | None = None  # last round's mean, kept to sum the next round into

    # ------------------------------------------------------------------ the global model

    @property
    def global_round(self) -> int:
        return self.model.round

    @property
    def global_version(self) -> str:
        return self.model.version

    @property
    def global_size(self) -> int:
        return self.model.size

    @property
    def global_bytes(self) -> bytes:
        """A copy of the global model's bytes, read from its file."""
        return self.model.read_bytes()

    def set_global(self, round_idx: int, data: bytes, version: str) -> None:
        self.model.open(round_idx, data, version)

    def roll_back(self, round_idx: int, data: bytes, version: str) -> None:
        self.model.roll_back(round_idx, data, version)

    def global_state(self):
        return self.model.state()

    def model_file(self, version: str) -> ModelFile:
        return self.model.serving(version)

    def set_plan(self, plan: Decision) -> None:
        """The mu and learning rates the next round's participants will receive."""
        with self._cond:
            self.plan = plan

    # ------------------------------------------------------------------ membership

    def join(self, name: str, dataset: dict, session: str = "") -> Member:
        """Admit `name` (coordinator/membership.py says when not); `session` is the one it already holds.
        Nothing is written here: participants.json records those sampled, off the join path."""
        with self._cond:
            now = self.clock()
            self._expire_leases(now)  # a lapsed member's name and place are free again
            renewing = self.membership.holds(name, session, now)
            try:
                member = self.membership.admit(name, dataset, session, now)
            except Zk0Error:  # a member refused on re-joining (its dataset no longer fits) leaves its round
                if (
                    name not in self._members
                    and self._round is not None
                    and name in self._round.outstanding()
                ):
                    self._round.dropped.add(name)
                    self._cond.notify_all()
                raise
            if member.ready:
                log.info(
                    "participant %s joined with %s: %s episodes, %s frames (%d live)",
                    name,
                    public_source(dataset.get("repo_id", "")),
                    dataset.get("episodes"),
                    dataset.get("frames"),
                    self._live_count(now),
                )
            elif not renewing:
                log.info("participant %s connected; it is building its model and dataset", name)
            self._cond.notify_all()
            return member

    def heartbeat(self, name: str, session: str) -> bool:
        """Renew a lease; False when `session` is not the participant's live one (lapsed, never joined,
        the coordinator restarted, or another process's)."""
        with self._cond:
            now = self.clock()
            if not self.membership.holds(name, session, now):
                return False
            self._members[name].lease_until = now + self.fed.lease_s
            return True

    def is_registered(self, name: str) -> bool:
        with self._cond:
            member = self._members.get(name)
            return member is not None and member.lease_until > self.clock()

    def holds_session(self, name: str, session: str) -> bool:
        """`session` is `name`'s live session: every call after Join must carry it."""
        with self._cond:
            return self.membership.holds(name, session, self.clock())

    def leave(self, name: str, session: str, reason: str) -> bool:
        """Drop a participant that says it stops, at once: out of the members, and out of its round."""
        with self._cond:
            if not self.membership.holds(name, session, self.clock()):
                return False
            del self._members[name]
            if self._round is not None and name in self._round.outstanding():
                self._round.dropped.add(name)
            self._cond.notify_all()
        log.warning("participant %s left (%s)", name, reason or "no reason given")
        return True

    @property
    def done(self) -> bool:
        return self._done

    def _live_count(self, now: float) -> int:
        return sum(1 for m in self._members.values() if m.lease_until > now and m.ready)

    def _ready_names(self, now: float) -> list[str]:
        """Members that can be sampled: lease live, dataset described."""
        return sorted(n for n, m in self._members.items() if m.lease_until > now and m.ready)

    def _expire_leases(self, now: float) -> None:
        for name, member in list(self._members.items()):
            if member.lease_until <= now:
                del self._members[name]
                log.warning("participant %s: lease lapsed, dropped (it may join again)", name)
                if self._round is not None and name in self._round.outstanding():
                    self._round.dropped.add(name)

    # ------------------------------------------------------------------ tasks

    def task_for(self, name: str) -> Task:
        with self._cond:
            if self._done:
                self._told_done.add(name)
                self._cond.notify_all()
                return Task(TaskKind.DONE, reason=self._done_reason)
            state = self._round
            remaining = state.deadline - self.clock() if state is not None else 0.0
            if state is None or name not in state.outstanding() or remaining <= 0:
                return Task(TaskKind.WAIT, wait_s=POLL_SECONDS, reason="no task for you in this round yet")
            return Task(
                TaskKind.TRAIN,
                round=state.round,
                version=self.global_version,
                size=self.global_size,
                manifest=self.manifest,
                lr=self.plan.lr_for(name),
                mu=self.plan.mu,
                steps=self.config.train.local_steps,
                seed=self.config.seed * 100_003 + state.round * 101 + state.attempt,
                deadline_s=remaining,
            )

    def count_download(self, name: str, nbytes: int) -> None:
        with self._cond:
            self._touch(name)
            if self._round is not None:
                self._round.bytes_down += nbytes

    def record_evaluation(self, name: str, round_idx: int, version: str, metrics: dict[str, float]) -> str:
        with self._cond:
            state = self._round
            if state is None or round_idx != state.round or version != self.global_version:
                return f"no evaluation expected for round {round_idx} / version {version[:12]}"
            problem = evaluation_problem(name, round_idx, metrics, state.sampled, state.evaluations)
            if not problem:
                state.evaluations[name] = dict(metrics)
            return problem

    def _touch(self, name: str) -> None:
        """An active transfer keeps a lease alive, whatever the heartbeats do."""
        member = self._members.get(name)
        if member is not None:
            member.lease_until = max(member.lease_until, self.clock() + self.fed.lease_s)

    # ------------------------------------------------------------------ uploads

    def receive_update(self, header: UpdateHeader, chunks: Iterable[tuple[int, bytes]]) -> None:
        """Spool, verify, validate and fold in one upload; UpdateRejected says why it does not count,
        intake.StorageError that the coordinator could not store it (the participant retries)."""
        name = header.participant_id
        with self._cond:
            state = self._round
            if state is None:
                raise UpdateRejected(Refusal.WRONG_ROUND, "no round is collecting updates now")
            if name in state.uploading:  # a retry racing its predecessor: the first one decides
                raise UpdateRejected(Refusal.NOT_IN_ROUND, f"an upload from {name} is already in progress")
            if name in state.outstanding():
                try:
                    validate_update(
                        header,
                        self.manifest,
                        current_round=state.round,
                        current_version=self.global_version,
                        max_bytes=self.max_update_bytes,
                        max_samples=self.config.train.local_steps * self.config.train.batch_size,
                    )
                except UpdateRejected as e:
                    state.refused[name] = f"{e.refusal.value}: {e.reason}"
                    self._cond.notify_all()
                    log.warning("round %d: refused update from %s: %s", state.round, name, e)
                    raise
            else:
                why = (
                    "already uploaded" if name in state.accepted else "not sampled or no longer in this round"
                )
                raise UpdateRejected(Refusal.NOT_IN_ROUND, f"participant {name}: {why}")
            state.uploading.add(name)
            base = self.model.path
        try:
            self._take_upload(state, header, chunks, base)
        finally:
            with self._cond:
                state.uploading.discard(name)

    def _take_upload(
        self, state: RoundState, header: UpdateHeader, chunks: Iterable[tuple[int, bytes]], base: Path
    ) -> None:
        """The upload of a participant reserved in `state.uploading`: spooled to a file of its own, moved
        into place (and recorded) under the lock only if its round is still waiting for it."""
        name, final = header.participant_id, self.store.update_path(header.round, header.participant_id)

        def touch() -> None:
            with self._cond:
                self._touch(name)

        limits = dict(max_bytes=self.max_update_bytes, max_norm=self.fed.max_update_norm)
        try:
            path, distance = spool_attempt(header, chunks, final, self.manifest, base, touch=touch, **limits)
        except UpdateRejected as e:
            self._refuse(state, name, e.refusal, e.reason)
        with self._cond:
            if self._round is not state or name not in state.outstanding():
                path.unlink(missing_ok=True)
                raise UpdateRejected(Refusal.WRONG_ROUND, f"round {header.round} ended while the upload ran")
            keep_attempt(path, final, lambda: self.store.record_accepted(header.round, header))
            state.accepted[name], state.distances[name] = header, distance
            state.bytes_up += header.size
            self._cond.notify_all()
        log.info(
            "round %d: accepted update from %s (%d samples, %.1f MB, loss %.4f, distance %.4g)",
            *(header.round, name, header.sample_count, header.size / 1e6),
            *(header.metrics.get("policy_loss", math.nan), distance),
        )

    def _refuse(self, state: RoundState, name: str, refusal: Refusal, reason: str) -> None:
        with self._cond:
            if self._round is state:
                state.refused[name] = f"{refusal.value}: {reason}"
                self._cond.notify_all()
        log.warning("round %d: refused update from %s: %s: %s", state.round, name, refusal.value, reason)
        raise UpdateRejected(refusal, reason)

    # ------------------------------------------------------------------ the driver

    def run(
        self,
        stop: threading.Event,
        on_round: Callable[[int, RoundState, RoundEntry], None],
        on_failed_attempt: Callable[[int, RoundEntry], None],
    ) -> None:
        """Drive rounds from the one after the last completed one to the configured count; `on_round` gets
        each aggregated round, `on_failed_attempt` each attempt that gathered too few updates."""
        try:
            round_idx = self.global_round + 1
            attempt = 1
            while round_idx <= self.fed.rounds and not stop.is_set():
                waited = self._wait_for_participants(stop)
                if stop.is_set():
                    break
                state = self._start_round(round_idx, attempt)
                self._collect(state, stop)
                if stop.is_set():
                    break
                entry = self._finish_round(state, waited)
                if state.accepted and len(state.accepted) >= self.fed.min_updates:
                    on_round(round_idx, state, entry)
                    round_idx, attempt = round_idx + 1, 1
                else:
                    on_failed_attempt(round_idx, entry)
                    attempt += 1
                    if attempt > self.fed.max_round_attempts:
                        raise RunStopped(
                            f"round {round_idx}: fewer than federation.min_updates={self.fed.min_updates} "
                            f"updates in {self.fed.max_round_attempts} attempts; stopping"
                        )
                    log.warning("round %d: redoing it (attempt %d)", round_idx, attempt)
            self._finish("the run is complete" if not stop.is_set() else "the coordinator is stopping")
        except BaseException as e:
            self._finish(f"the run stopped: {e}")
            raise

    def wait_until_told(self, timeout: float) -> None:
        """Give live participants up to `timeout` seconds to hear that the run is over."""
        deadline = self.clock() + timeout
        with self._cond:
            while self.clock() < deadline:
                now = self.clock()
                live = {n for n, m in self._members.items() if m.lease_until > now}
                if live <= self._told_done:
                    return
                self._cond.wait(POLL_SECONDS)

    def _finish(self, reason: str) -> None:
        with self._cond:
            self._done, self._done_reason = True, reason
            self._round = None
            self._cond.notify_all()

    def _wait_for_participants(self, stop: threading.Event) -> float:
        started = self.clock()
        warned = False
        said = started
        with self._cond:
            while not stop.is_set():
                now = self.clock()
                self._expire_leases(now)
                live = self._live_count(now)
                if live >= self.fed.min_participants:
                    return now - started
                if now - said >= WAITING_LOG_S:
                    said = now
                    log.info("%s", waiting_line(self.fed.min_participants, self._ready_names(now)))
                if not warned and now - started >= self.fed.join_timeout_s:
                    message = (
                        f"only {live} of federation.min_participants={self.fed.min_participants} "
                        "participants "
                        f"joined within {self.fed.join_timeout_s:.0f}s"
                    )
                    if self.fed.on_join_timeout == "stop":
                        raise RunStopped(message + "; stopping (federation.on_join_timeout = 'stop')")
                    log.warning("%s; still waiting (federation.on_join_timeout = 'wait')", message)
                    warned = True
                self._cond.wait(POLL_SECONDS)
        return self.clock() - started

    def _start_round(self, round_idx: int, attempt: int) -> RoundState:
        with self._cond:
            now = self.clock()
            live = self._ready_names(now)
            resumed = self.store.accepted(round_idx) if attempt == 1 else []
            state = RoundState(round_idx, attempt, [], now + self.fed.round_timeout_s, now)
            for header, _ in resumed:
                if header.base_version == self.global_version:
                    state.accepted[header.participant_id] = header
            state.sampled = self.strategy.sample(round_idx, attempt, live, sorted(state.accepted))
            self._round = state
            self._cond.notify_all()
            taking_part = {n: self._members[n].dataset for n in state.sampled if n in self._members}
        self.store.record_participants(taking_part)  # for the model card: who took part, with what
        if state.accepted:
            log.info("round %d: kept %d updates accepted before the restart", round_idx, len(state.accepted))
        log.info(
            "round %d (attempt %d): training %s from %s, deadline %.0fs",
            round_idx,
            attempt,
            ", ".join(state.sampled),
            self.global_version[:12],
            self.fed.round_timeout_s,
        )
        return state

    def _collect(self, state: RoundState, stop: threading.Event) -> None:
        with self._cond:
            while not stop.is_set():
                now = self.clock()
                self._expire_leases(now)
                if not state.outstanding():
                    return
                if now >= state.deadline:
                    missing = sorted(state.outstanding())
                    log.warning("round %d: deadline passed without %s", state.round, ", ".join(missing))
                    state.dropped.update(missing)
                    return
                self._cond.wait(POLL_SECONDS)

    def _aggregate(self, state: RoundState) -> Aggregate | None:
        """The strategy's aggregate of the spooled updates (read one tensor at a time, in participant-name
        order, so the global model's bytes do not depend on the order updates arrived in). Updates too far
        from the base model, or that make the aggregate non-finite, move from accepted to refused (None: too
        few are left to aggregate)."""
        reuse, self._spare_sums = self._spare_sums, None
        updates = {
            n: (self.store.update_path(state.round, n), float(h.sample_count))
            for n, h in state.accepted.items()
        }
        complete_distances(updates, state.distances, self.model.path)
        result, dropped = screened_aggregate(
            self.strategy,
            RoundUpdates(state.round, self.manifest, self.model.path, updates, dict(state.distances), reuse),
            bounds=dict(max_norm=self.fed.max_update_norm, factor=self.fed.update_norm_median_factor),
            min_updates=self.fed.min_updates,
        )
        for name, reason in dropped.items():
            log.warning("round %d: update from %s left out: %s", state.round, name, reason)
            del state.accepted[name]
            state.refused[name] = f"{Refusal.BAD_TENSORS.value}: {reason}"
        return result

    def _finish_round(self, state: RoundState, waited: float) -> RoundEntry:
        """The attempt's record (zk0.records), with its version once its updates are aggregated."""
        with self._cond:
            self._round = None  # late uploads are refused from here on
        train_s = self.clock() - state.started
        started = self.clock()
        # The mean (computed in the accumulator's own memory) streams to disk, never encoded in memory; the
        # file is hashed once for its version, and downloads are served from it.
        result = self._aggregate(state) if len(state.accepted) >= self.fed.min_updates else None
        entry = attempt_record(
            state,
            base_version=self.global_version,
            plan=self.plan,
            local_steps=self.config.train.local_steps,
            waited=waited,
            train_s=train_s,
        )
        if result is None or not state.accepted or len(state.accepted) < self.fed.min_updates:
            log.warning(
                "round %d: %d updates, fewer than federation.min_updates=%d: not aggregated",
                state.round,
                len(state.accepted),
                self.fed.min_updates,
            )
            return entry
        path = self.store.write_global(state.round, result.state)
        if result.server_state is not None:  # saved with the model: a resumed run continues from it
            self.store.write_server_state(state.round, result.server_state)
            self.strategy.load_server_state(result.server_state)
        self._spare_sums = reusable_sums(result.state)  # the next round sums into these, no fresh model
        version = self.model.adopt(state.round, path)  # completed once on_round records it (mark_completed)
        entry.version = version
        entry.aggregation = {"strategy": self.strategy.name, **result.stats}
        entry.seconds.aggregate = self.clock() - started
        log.info(
            "round %d: aggregated %d updates (%d samples) -> %s; %.1f MB down, %.1f MB up; "
            "wait %.1fs, train %.1fs, aggregate %.2fs",
            state.round,
            len(state.accepted),
            sum(h.sample_count for h in state.accepted.values()),
            version[:12],
            state.bytes_down / 1e6,
            state.bytes_up / 1e6,
            waited,
            train_s,
            entry.seconds.aggregate,
        )
        return entry
