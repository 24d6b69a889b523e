"""What every payload shares, whatever it carries: its version id and the refusal of a bad one.

A model version is the SHA-256 of its payload's exact bytes. Receivers fail closed: a payload whose size,
offsets, hash or layout disagree with what was declared is refused with a `PayloadRejected` whose reason
says exactly what was wrong.
"""

import hashlib

_HEX = frozenset("0123456789abcdef")


class PayloadRejected(Exception):
    """A received payload does not match what its sender declared; `reason` says how."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def is_sha256_hex(value: str) -> bool:
    """True for a lowercase 64-digit hex string, the only form a version id takes."""
    return len(value) == 64 and set(value) <= _HEX


def sha256_hex(data: bytes | bytearray | memoryview) -> str:
    """Lowercase hex SHA-256; for a model payload this is its version id."""
    return hashlib.sha256(data).hexdigest()
