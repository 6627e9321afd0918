"""The identity graph (design.md section 5): which profile an event belongs to, which
identifiers it links, and which profiles merge.

Identifiers are (type, value) pairs. Workspace guardrails, like Segment's identity
rules, decide what may link: blocked values never link anything, a limit per
identifier type refuses links beyond it (default: one user_id per profile, so two
user_ids never merge), and a priority order says which identifier names the profile
when they disagree. The older profile survives a merge.

The resolver works on an in-memory view of the part of the graph a batch touches,
loaded once per batch, so resolution costs no query per event.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from services.ingest.model import Event, Identifier
from services.shared.errors import FieldViolation, InvalidArgument

DEFAULT_BLOCKED_VALUES = (
    "",
    "0",
    "-1",
    "null",
    "undefined",
    "anonymous",
    "guest",
    "[object Object]",
)
DEFAULT_PRIORITY = ("user_id", "email", "device_id", "anonymous_id")
DEFAULT_LIMITS = {"user_id": 1}
DEFAULT_LIMIT = 5


@dataclass(frozen=True)
class IdentityRules:
    """A workspace's identity guardrails (stored as JSON in workspaces.identity_rules)."""

    blocked_values: frozenset[str] = frozenset(v.lower() for v in DEFAULT_BLOCKED_VALUES)
    limits: Mapping[str, int] = field(default_factory=lambda: dict(DEFAULT_LIMITS))
    default_limit: int = DEFAULT_LIMIT
    priority: tuple[str, ...] = DEFAULT_PRIORITY

    def limit(self, id_type: str) -> int:
        """How many distinct values of `id_type` one profile may hold."""
        return self.limits.get(id_type, self.default_limit)

    def rank(self, id_type: str) -> int:
        """Position of `id_type` in the priority order (unlisted types come last)."""
        try:
            return self.priority.index(id_type)
        except ValueError:
            return len(self.priority)

    def is_blocked(self, value: str) -> bool:
        """True for placeholder values that must never link profiles."""
        return value.strip().lower() in self.blocked_values

    @classmethod
    def parse(cls, data: Mapping[str, Any] | None) -> IdentityRules:
        """Rules from their JSON form; missing keys keep the defaults.

        Shape: {"blocked_values": [str], "limits": {type: int >= 1},
        "default_limit": int >= 1, "priority": [type]}. Raises InvalidArgument naming
        the bad field.
        """
        if not data:
            return cls()
        problems: list[FieldViolation] = []
        unknown = set(data) - {"blocked_values", "limits", "default_limit", "priority"}
        for key in sorted(unknown):
            problems.append(FieldViolation(f"identity_rules.{key}", "unknown setting"))
        blocked = data.get("blocked_values", list(DEFAULT_BLOCKED_VALUES))
        if not isinstance(blocked, list) or not all(isinstance(v, str) for v in blocked):
            problems.append(FieldViolation("identity_rules.blocked_values", "must be strings"))
            blocked = []
        limits = data.get("limits", DEFAULT_LIMITS)
        if not isinstance(limits, dict) or not all(
            isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) and v >= 1
            for k, v in limits.items()
        ):
            problems.append(
                FieldViolation("identity_rules.limits", "must map id types to integers >= 1")
            )
            limits = {}
        default_limit = data.get("default_limit", DEFAULT_LIMIT)
        if (
            not isinstance(default_limit, int)
            or isinstance(default_limit, bool)
            or default_limit < 1
        ):
            problems.append(FieldViolation("identity_rules.default_limit", "must be >= 1"))
            default_limit = DEFAULT_LIMIT
        priority = data.get("priority", list(DEFAULT_PRIORITY))
        if (
            not isinstance(priority, list)
            or not all(isinstance(v, str) and v for v in priority)
            or len(set(priority)) != len(priority)
        ):
            problems.append(
                FieldViolation("identity_rules.priority", "must be distinct id type names")
            )
            priority = list(DEFAULT_PRIORITY)
        if problems:
            raise InvalidArgument("identity_rules: invalid settings", problems)
        return cls(
            blocked_values=frozenset(v.strip().lower() for v in blocked),
            limits={**DEFAULT_LIMITS, **limits},
            default_limit=default_limit,
            priority=tuple(priority),
        )

    def to_json(self) -> dict[str, Any]:
        """The JSON form stored on the workspace."""
        return {
            "blocked_values": sorted(self.blocked_values),
            "limits": dict(self.limits),
            "default_limit": self.default_limit,
            "priority": list(self.priority),
        }


@dataclass
class ProfileNode:
    """A profile as the resolver sees it: its identifiers grouped by type."""

    profile_id: int  # > 0: stored already; < 0: created by this batch (provisional)
    created_at_us: int
    last_seen_us: int | None = None
    ids: dict[str, set[str]] = field(default_factory=dict)

    @property
    def is_new(self) -> bool:
        return self.profile_id < 0

    def age_key(self) -> tuple[int, int, int]:
        """Sorts older profiles first: stored before new, then creation time, then id."""
        return (int(self.is_new), self.created_at_us, abs(self.profile_id))

    def holds(self, identifier: Identifier) -> bool:
        return identifier.value in self.ids.get(identifier.type, ())


@dataclass(frozen=True)
class Merge:
    """Profile `merged_id` joined `survivor_id` while resolving event `event_index`."""

    survivor_id: int
    merged_id: int
    event_index: int
    reason: str


class IdentityRow(NamedTuple):
    """One stored identifier with the profile holding it (as loaded for a batch; a
    NamedTuple because a batch loads thousands)."""

    id_type: str
    id_value: str
    profile_id: int
    created_at_us: int
    last_seen_us: int | None


# A stored identifier as a store returns it: an IdentityRow, or a row of the same five
# fields in the same order (asyncpg's records, not copied into IdentityRows).
IdentityRecord = IdentityRow | Sequence[Any]


class IdentityGraph:
    """The slice of a workspace's identity graph one batch touches, resolved in memory."""

    def __init__(self, rules: IdentityRules, now_us: int) -> None:
        self.rules = rules
        self.now_us = now_us
        self.owner: dict[tuple[str, str], int] = {}
        self.nodes: dict[int, ProfileNode] = {}
        self.merges: list[Merge] = []
        self.redirect: dict[int, int] = {}  # merged profile -> the profile it joined
        self.created: list[int] = []  # provisional ids, in creation order
        self.new_links: dict[tuple[str, str], int] = {}  # identifiers first linked here
        self._next_new = -1

    def load(self, rows: Iterable[IdentityRecord]) -> None:
        """Add stored identifiers (and their profiles) to the view: IdentityRows, or
        any rows of the same five fields in that order (a group loads thousands)."""
        nodes = self.nodes
        owner = self.owner
        for id_type, id_value, profile_id, created_at_us, last_seen_us in rows:
            node = nodes.get(profile_id)
            if node is None:
                node = nodes[profile_id] = ProfileNode(profile_id, created_at_us, last_seen_us)
            values = node.ids.get(id_type)
            if values is None:
                node.ids[id_type] = {id_value}
            else:
                values.add(id_value)
            owner[(id_type, id_value)] = profile_id

    def usable(self, event: Event) -> list[Identifier]:
        """The event's identifiers that may link, most important first (one per key)."""
        if len(event.identifiers) == 1 and not event.previous_id:
            # Most events (a track with one id): nothing to order or deduplicate.
            (only,) = event.identifiers
            return [] if self.rules.is_blocked(only.value) else [only]
        found = [i for i in event.identifiers if not self.rules.is_blocked(i.value)]
        if event.previous_id and not self.rules.is_blocked(event.previous_id):
            # Alias: previous_id is a user_id already known as one, else an anonymous id.
            as_user = ("user_id", event.previous_id)
            id_type = "user_id" if as_user in self.owner else "anonymous_id"
            found.append(Identifier(id_type, event.previous_id, "previous_id"))
        found.sort(key=lambda i: self.rules.rank(i.type))
        unique: dict[tuple[str, str], Identifier] = {}
        for identifier in found:
            unique.setdefault(identifier.key, identifier)
        return list(unique.values())

    def canonical(self, profile_id: int) -> int:
        """The profile `profile_id` ended up in after this batch's merges."""
        while profile_id in self.redirect:
            profile_id = self.redirect[profile_id]
        return profile_id

    def resolve(self, event: Event, position: int | None = None) -> int:
        """Attribute `event` to a profile, linking and merging as the rules allow.

        Merges it causes record `position` (default: the event's request index; a
        group of several requests passes the event's place in the group). Returns the
        profile id (negative for a profile created by this batch). The caller has
        already rejected events with no usable identifier.
        """
        at = event.index if position is None else position
        identifiers = self.usable(event)
        if len(identifiers) == 1:
            # Most events: one identifier, already held. Its holder is the profile (the
            # loops below would find it, with nothing to attach or merge).
            holder = self.owner.get(identifiers[0].key)
            if holder is not None:
                return holder
        anchor: int | None = None
        for position, identifier in enumerate(identifiers):
            holder = self.owner.get(identifier.key)
            if holder is None:
                continue
            # The first known identifier names the profile, unless a more important
            # identifier the event carries cannot join it (e.g. a second user_id).
            if all(self._fits(holder, higher) for higher in identifiers[:position]):
                anchor = holder
            break
        if anchor is None:
            anchor = self._create()
        for identifier in identifiers:
            holder = self.owner.get(identifier.key)
            if holder is None:
                if self._fits(anchor, identifier):
                    self._attach(anchor, identifier)
            elif holder != anchor and self._can_merge(anchor, holder):
                anchor = self._merge(anchor, holder, at, identifier)
        return anchor

    def _create(self) -> int:
        profile_id = self._next_new
        self._next_new -= 1
        self.nodes[profile_id] = ProfileNode(profile_id, self.now_us)
        self.created.append(profile_id)
        return profile_id

    def _fits(self, profile_id: int, identifier: Identifier) -> bool:
        node = self.nodes[profile_id]
        if node.holds(identifier):
            return True
        return len(node.ids.get(identifier.type, ())) < self.rules.limit(identifier.type)

    def _attach(self, profile_id: int, identifier: Identifier) -> None:
        self.nodes[profile_id].ids.setdefault(identifier.type, set()).add(identifier.value)
        self.owner[identifier.key] = profile_id
        self.new_links[identifier.key] = profile_id

    def _can_merge(self, a: int, b: int) -> bool:
        left, right = self.nodes[a], self.nodes[b]
        for id_type in set(left.ids) | set(right.ids):
            together = left.ids.get(id_type, set()) | right.ids.get(id_type, set())
            if len(together) > self.rules.limit(id_type):
                return False
        return True

    def _merge(self, a: int, b: int, event_index: int, via: Identifier) -> int:
        survivor, merged = sorted((self.nodes[a], self.nodes[b]), key=ProfileNode.age_key)
        for id_type, values in merged.ids.items():
            survivor.ids.setdefault(id_type, set()).update(values)
            for value in values:
                self.owner[(id_type, value)] = survivor.profile_id
                if (id_type, value) in self.new_links:
                    self.new_links[(id_type, value)] = survivor.profile_id
        if merged.last_seen_us is not None:
            survivor.last_seen_us = max(survivor.last_seen_us or 0, merged.last_seen_us)
        del self.nodes[merged.profile_id]
        self.redirect[merged.profile_id] = survivor.profile_id
        self.merges.append(
            Merge(
                survivor.profile_id,
                merged.profile_id,
                event_index,
                f"{via.type} {via.value!r} linked them",
            )
        )
        return survivor.profile_id
