"""Plain records the segmentation domain works with (no grpc, protobuf or SQL here)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Audience / computed trait states (mapped to AudienceState in the servicer).
BACKFILLING = "backfilling"
LIVE = "live"
FAILED = "failed"

ENTERED = "entered"
EXITED = "exited"


@dataclass(frozen=True)
class Progress:
    """Progress of a backfill: `done` of `total` steps, in `stage`."""

    done: int = 0
    total: int = 0
    stage: str = ""


@dataclass(frozen=True)
class AudienceRecord:
    """One audience as stored: the latest definition and the version being served."""

    audience_id: int
    key: str
    name: str
    description: str
    definition: Any
    version: int  # the latest definition's version
    live_version: int | None  # the version memberships reflect (None: not computed yet)
    state: str
    size: int
    progress: Progress
    account_level: bool
    created_at_us: int
    updated_at_us: int
    failure_reason: str = ""  # why the last evaluation failed (state FAILED)
    realtime: bool = False  # evaluated per event by the realtime worker
    holdout_share: float = 0.0  # share of members held out as control
    goal: Any = None  # JSON goal for performance tracking (None: no goal)


@dataclass(frozen=True)
class ComputedTraitRecord:
    """One computed trait as stored."""

    key: str
    name: str
    definition: Any
    version: int
    state: str
    created_at_us: int
    updated_at_us: int
    failure_reason: str = ""  # why the last computation failed (state FAILED)
    realtime: bool = False  # evaluated per event by the realtime worker


@dataclass(frozen=True)
class ProfileRef:
    """A canonical profile with its identifiers as (type, value) pairs."""

    profile_id: int
    identifiers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Change:
    """One membership change of the change log."""

    seq: int
    audience_id: int
    audience_key: str
    profile_id: int
    kind: str  # entered | exited
    at_us: int
    version: int
    # The identifiers the person had when the record was written, kept on the exits
    # of an erasure (their identities are gone afterwards); None: read them now.
    identifiers: tuple[tuple[str, str], ...] | None = None


@dataclass(frozen=True)
class Diff:
    """What applying a new member set changed."""

    entered: tuple[int, ...] = ()
    exited: tuple[int, ...] = ()
    size: int = 0
    # Survivors whose membership moved over from profiles merged into them (no change
    # record: the person never left), with the person's earliest entry, and the
    # merged-away profiles whose rows went: the hot state must follow both.
    moved: tuple[tuple[int, int], ...] = ()
    absorbed: tuple[int, ...] = ()


@dataclass(frozen=True)
class Member:
    profile_id: int
    entered_at_us: int


@dataclass
class ProfileFacts:
    """Everything explain reads about one canonical profile, as plain data."""

    profile_id: int
    events: list[dict[str, Any]] = field(default_factory=list)
    traits: dict[str, Any] = field(default_factory=dict)
    computed: dict[str, Any] = field(default_factory=dict)
    audiences: set[str] = field(default_factory=set)
    predictions: dict[str, dict[str, float]] = field(default_factory=dict)
