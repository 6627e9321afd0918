"""Profile traits: each top-level key takes the value of the identify with the latest
timestamp that set it, received order (seq) breaking ties; null removes the trait but
stays as a tombstone so an older value cannot come back. Order-independent by design:
any arrival order of the same identifies gives the same winners."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, NamedTuple


class TraitRow(NamedTuple):
    """The current value of one trait of one profile and the version that set it.

    A NamedTuple: a batch builds thousands, and a frozen dataclass costs several
    times as much to construct."""

    profile_id: int
    key: str
    value: Any  # None is a tombstone
    timestamp_us: int
    seq: int

    @property
    def version(self) -> tuple[int, int]:
        return (self.timestamp_us, self.seq)


def winners(rows: Iterable[TraitRow]) -> dict[tuple[int, str], TraitRow]:
    """The newest row per (profile, key)."""
    best: dict[tuple[int, str], TraitRow] = {}
    for row in rows:
        slot = (row.profile_id, row.key)
        current = best.get(slot)
        if current is None or row.version > current.version:
            best[slot] = row
    return best
