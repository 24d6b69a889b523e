"""Who takes part: the member table and the rules of admission (names, sessions, bounds, the join rate
limit, the dataset check).

One name has one live session. Join issues a random session id that every later call must carry, so a
second process under a live participant's name is refused instead of sharing its identity, and a process
whose session went stale (lease lapsed, coordinator restarted) is told to join again. Not locked here: the
Coordinator holds its lock around every call.
"""

from __future__ import annotations

import hmac
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass

from coordinator.features import feature_differences
from zk0.config import FederationConfig
from zk0.errors import Zk0Error

# fullmatch, never match: "$" also matches before a final newline, and names become spool file names.
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}")
LOCAL_PREFIX = "local/"  # zk0/data.py names a local dataset local/<directory name>


class SessionConflict(Zk0Error):
    """Another live session holds the name: a second process under one participant's name."""


class JoinsExhausted(Zk0Error):
    """Too many members, or too many joins in too little time: worth retrying later."""


class DatasetMismatch(Zk0Error):
    """The participant's dataset does not fit the run's policy: retrying cannot help."""


@dataclass
class Member:
    name: str
    dataset: dict
    lease_until: float
    session: str = ""

    @property
    def ready(self) -> bool:
        """A participant joins once to get the run's config, then again with its dataset's description
        once its model and data are built: only then can it be counted on and sampled."""
        return bool(self.dataset.get("features"))


def check_name(name: str) -> None:
    if not NAME.fullmatch(name):
        raise Zk0Error(f"participant name {name!r} must be 1-64 characters of letters, digits, '_', '.', '-'")


def public_source(repo_id: str) -> str:
    """What the coordinator may say about a participant's dataset: a hub id, never a local path."""
    if HUB_ID.fullmatch(repo_id) and not repo_id.startswith(LOCAL_PREFIX):
        return repo_id
    return "a local dataset"


class TokenBucket:
    """`rate` events per second on average, `burst` at once: a pure function of the times it is asked."""

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate, self.burst = rate, float(burst)
        self.tokens, self.last = float(burst), now

    def take(self, now: float) -> bool:
        self.tokens = min(self.burst, self.tokens + max(0.0, now - self.last) * self.rate)
        self.last = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


class Membership:
    """The member table (name -> Member) and who may enter it."""

    def __init__(
        self, fed: FederationConfig, now: float, *, features: Mapping | None = None, fps: float = 0.0
    ) -> None:
        self.fed = fed
        self.features = dict(features) if features else None  # None: no dataset check (bench, tests)
        self.fps = fps
        self.table: dict[str, Member] = {}
        self.bucket = TokenBucket(fed.joins_per_second, fed.join_burst, now)

    def admit(self, name: str, dataset: dict, session: str, now: float) -> Member:
        """The member `name` becomes (same session renewed, or a new one); refusals say why.

        Lapsed members must have been expired (dropped from their round) before: a lapsed entry here is
        replaced like an absent one."""
        check_name(name)
        current = self.table.get(name)
        renewing = current is not None and current.lease_until > now
        if renewing and not self.owns(current, session):
            raise SessionConflict(
                f"participant {name} is already taking part in another live session (a second process "
                f"under this name?); a stopped one's place frees {self.fed.lease_s:g}s after its last "
                "heartbeat"
            )
        if dataset.get("features") and self.features is not None:
            problems = feature_differences(
                self.features, self.fps, dataset["features"], dataset.get("fps", 0)
            )
            if problems:
                if renewing:
                    del self.table[name]
                raise DatasetMismatch(f"dataset does not fit the run's policy: {'; '.join(problems)}")
        if not renewing:
            if len(self.table) >= self.fed.max_members:
                raise JoinsExhausted(
                    f"the coordinator has its maximum of {self.fed.max_members} members "
                    "(federation.max_members); try again later"
                )
            if not self.bucket.take(now):
                raise JoinsExhausted(
                    f"too many joins: at most {self.fed.joins_per_second:g} per second "
                    f"(federation.joins_per_second); try again later"
                )
        member = Member(
            name, dataset, now + self.fed.lease_s, current.session if renewing else _new_session()
        )
        self.table[name] = member
        return member

    def owns(self, member: Member | None, session: str) -> bool:
        return (
            member is not None
            and bool(session)
            and hmac.compare_digest(member.session.encode(), session.encode())
        )

    def holds(self, name: str, session: str, now: float) -> bool:
        """`session` is `name`'s live session."""
        member = self.table.get(name)
        return self.owns(member, session) and member.lease_until > now


def waiting_line(wanted: int, have: list[str]) -> str:
    """What a coordinator waiting for participants says every few seconds: who it has, how many more."""
    more = wanted - len(have)
    noun = "participant" if more == 1 else "participants"
    return f"waiting for {more} more {noun} (have: {', '.join(have) or 'none'})"


def _new_session() -> str:
    return secrets.token_urlsafe(24)
