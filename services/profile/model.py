"""Domain types of the profile service and the validation of what callers ask for.

Plain Python: no grpc, protobuf, SQL or Redis here. The servicer and the HTTP view
translate their wire formats into these types; the stores fill them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import Enum

from services.shared.errors import FieldViolation, InvalidArgument
from services.shared.identifiers import normalize_identifier

WELL_KNOWN_ID_TYPES = ("user_id", "anonymous_id", "email", "device_id")
# Custom external id types share the shape of the well-known ones, so one pattern
# accepts both and keeps ':' (the separator in hot-state keys) out of the type.
ID_TYPE_PATTERN = re.compile(r"[a-z0-9_]{1,64}")
MAX_ID_VALUE_CHARS = 255
MAX_TRAIT_KEY_CHARS = 255
MAX_BATCH_IDENTIFIERS = 100
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
MAX_EVENT_NAMES = 100
DEFAULT_RECOMMENDATIONS = 10
MAX_RECOMMENDATIONS = 100


class Section(Enum):
    """The parts of a profile a caller may ask for."""

    TRAITS = "traits"
    COMPUTED_TRAITS = "computed_traits"
    AUDIENCES = "audiences"
    PREDICTIONS = "predictions"
    RECOMMENDATIONS = "recommendations"
    IDENTIFIERS = "identifiers"


ALL_SECTIONS = frozenset(Section)


@dataclass(frozen=True)
class Identifier:
    """One identifier of a profile, already validated."""

    type: str
    value: str


@dataclass(frozen=True)
class ProfileQuery:
    """What to read of a profile: sections, and (optionally) only some trait keys."""

    sections: frozenset[Section] = ALL_SECTIONS
    trait_keys: tuple[str, ...] = ()


@dataclass(frozen=True)
class PredictionScore:
    """A prediction's score of one profile, as the prediction service left it."""

    key: str
    probability: float
    percentile: float
    scored_at_us: int | None
    top_features: tuple[str, ...] = ()


@dataclass(frozen=True)
class Recommendation:
    """One recommended item; consumed ones are shown only when asked for."""

    item_id: str
    score: float
    consumed: bool = False
    # The item's properties as JSON object text (passed through, never decoded here).
    metadata: str | None = None
    # The recommendation object that produced it ('' for items written without one).
    model_key: str = ""
    # The workspace's popular item (the profile has no list of this object yet).
    popular: bool = False


@dataclass
class HotProfile:
    """A profile as the hot state holds it.

    traits and computed_traits are JSON object text, passed through to the wire
    untouched (the hot path never decodes a trait); None when the section was not asked.
    """

    profile_id: str
    last_seen_us: int | None = None
    traits: bytes | None = None
    computed_traits: bytes | None = None
    audiences: dict[str, int] = field(default_factory=dict)
    predictions: list[PredictionScore] = field(default_factory=list)
    recommendations: list[Recommendation] | None = None
    # Recommendation objects whose items are the workspace's popular ones: the profile
    # has no list of its own for them yet (created since their last training).
    popular_models: frozenset[str] = frozenset()
    identifiers: list[Identifier] = field(default_factory=list)
    # Keys of the audiences (of `audiences`) whose holdout this profile is in.
    holdouts: frozenset[str] = frozenset()


@dataclass(frozen=True)
class TimelineEvent:
    """One stored event of a profile's timeline."""

    seq: int
    message_id: str
    type: str
    name: str | None
    timestamp_us: int
    # The payloads as the JSON text stored (None when absent), never decoded here.
    properties: str | None
    traits: str | None
    context: str | None
    user_id: str | None = None
    anonymous_id: str | None = None


@dataclass(frozen=True)
class EventPage:
    """A page of a timeline and the token of the next one ('' at the end)."""

    events: list[TimelineEvent]
    next_page_token: str


@dataclass(frozen=True)
class Deletion:
    """What erasing a profile removed."""

    events_deleted: int
    identities_deleted: int
    audiences_exited: int


@dataclass(frozen=True)
class Erasure:
    """What the database side of erasing a person did, before it commits."""

    profile_ids: list[int]  # the survivor and every profile merged into it
    identifiers: list[tuple[str, str]]
    # The seqs of the person's events, deleted or (group calls) kept without the
    # person: their `stream:events` entries go too.
    event_seqs: list[int]
    audiences_exited: int


def identifier_violations(id_type: str, id_value: str, field_name: str) -> list[FieldViolation]:
    """Why an identifier is malformed (empty when it is fine)."""
    found: list[FieldViolation] = []
    if not ID_TYPE_PATTERN.fullmatch(id_type):
        found.append(
            FieldViolation(
                f"{field_name}.type",
                "must be user_id, anonymous_id, email, device_id or a custom type of "
                "1-64 characters a-z, 0-9 or _",
            )
        )
    if not 1 <= len(id_value) <= MAX_ID_VALUE_CHARS:
        found.append(
            FieldViolation(f"{field_name}.value", f"must be 1-{MAX_ID_VALUE_CHARS} characters long")
        )
    return found


def parse_identifier(id_type: str, id_value: str, field_name: str = "identifier") -> Identifier:
    """A validated Identifier; InvalidArgument naming the bad part otherwise."""
    violations = identifier_violations(id_type, id_value, field_name)
    if violations:
        raise InvalidArgument(f"{field_name}: malformed identifier", violations)
    return Identifier(id_type, normalize_identifier(id_type, id_value))


def parse_identifiers(pairs: list[tuple[str, str]], field_name: str) -> list[Identifier]:
    """Validate a batch of identifiers, reporting every bad one at once."""
    if not pairs:
        raise InvalidArgument(
            f"{field_name}: at least one identifier is required",
            [FieldViolation(field_name, "must not be empty")],
        )
    if len(pairs) > MAX_BATCH_IDENTIFIERS:
        raise InvalidArgument(
            f"{field_name}: at most {MAX_BATCH_IDENTIFIERS} identifiers per call",
            [FieldViolation(field_name, f"at most {MAX_BATCH_IDENTIFIERS}; got {len(pairs)}")],
        )
    violations: list[FieldViolation] = []
    for index, (id_type, id_value) in enumerate(pairs):
        violations.extend(identifier_violations(id_type, id_value, f"{field_name}[{index}]"))
    if violations:
        raise InvalidArgument(f"{field_name}: malformed identifiers", violations)
    return [
        Identifier(id_type, normalize_identifier(id_type, id_value)) for id_type, id_value in pairs
    ]


EVERYTHING = ProfileQuery()


def parse_query(sections: list[Section], trait_keys: list[str], field_name: str) -> ProfileQuery:
    """A ProfileQuery: no sections means all; trait keys must be non-empty and short."""
    if not sections and not trait_keys:
        return EVERYTHING  # the common request, with nothing to check (GetProfile's hot path)
    violations = [
        FieldViolation(f"{field_name}.paths[{index}]", "must be a trait key of 1-255 characters")
        for index, key in enumerate(trait_keys)
        if not 1 <= len(key) <= MAX_TRAIT_KEY_CHARS
    ]
    if violations:
        raise InvalidArgument(f"{field_name}: malformed trait keys", violations)
    chosen = frozenset(sections) or ALL_SECTIONS
    # Duplicates would only repeat work in the read script.
    return ProfileQuery(chosen, tuple(dict.fromkeys(trait_keys)))


def page_size(requested: int, field_name: str = "page_size") -> int:
    """The page size to use: default when 0, InvalidArgument outside 0..MAX_PAGE_SIZE."""
    if requested < 0 or requested > MAX_PAGE_SIZE:
        raise InvalidArgument(
            f"{field_name}: must be between 0 and {MAX_PAGE_SIZE}",
            [FieldViolation(field_name, f"must be between 0 and {MAX_PAGE_SIZE}")],
        )
    return requested or DEFAULT_PAGE_SIZE


def event_names(names: list[str], field_name: str = "event_names") -> tuple[str, ...]:
    """Validated event-name filter (empty: every event)."""
    violations = [
        FieldViolation(f"{field_name}[{index}]", "must be 1-255 characters long")
        for index, name in enumerate(names)
        if not 1 <= len(name) <= 255
    ]
    if len(names) > MAX_EVENT_NAMES:
        violations.append(FieldViolation(field_name, f"at most {MAX_EVENT_NAMES} names"))
    if violations:
        raise InvalidArgument(f"{field_name}: malformed filter", violations)
    return tuple(dict.fromkeys(names))


def recommendation_limit(requested: int, field_name: str = "limit") -> int:
    """How many recommendations to return: default when 0, at most MAX_RECOMMENDATIONS."""
    if requested < 0 or requested > MAX_RECOMMENDATIONS:
        raise InvalidArgument(
            f"{field_name}: must be between 0 and {MAX_RECOMMENDATIONS}",
            [FieldViolation(field_name, f"must be between 0 and {MAX_RECOMMENDATIONS}")],
        )
    return requested or DEFAULT_RECOMMENDATIONS
