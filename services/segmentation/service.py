"""The segmentation domain: audiences and computed traits, their backfills, recomputes,
previews, explanations and the membership change log.

No grpc, protobuf or SQL here: the servicer translates requests into these calls, the
store (store.py) persists, the hot-state writer (hot.py) updates Redis. Evaluation
time is ``as_of`` when a call gives one, else the injected clock's now.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import logging
from collections.abc import AsyncIterator, Collection, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from opentelemetry import metrics

from services.segmentation.accounts import ACCOUNT_ID_TYPE, account_violations
from services.segmentation.definitions import (
    audience_refs_raw,
    audience_violations,
    check_holdout_share,
    check_key,
    check_name,
    computed_dependencies_raw,
    computed_refs_raw,
    computed_violations,
    context_keys,
    context_violations,
    decode_json,
    dependents,
    parse_goal,
    prediction_refs_raw,
    reject,
)
from services.segmentation.explaining import ExplainedNode, annotate
from services.segmentation.hot import HotState
from services.segmentation.language import (
    Event,
    dependency_layers,
    dependency_order,
    parse_audience,
)
from services.segmentation.model import (
    BACKFILLING,
    ENTERED,
    FAILED,
    LIVE,
    AudienceRecord,
    Change,
    ComputedTraitRecord,
    Diff,
    ProfileRef,
    Progress,
)
from services.segmentation.performance import Performance, summarize
from services.segmentation.reference import (
    ProfileData,
    evaluate,
    explain,
    get_property,
    match_value,
)
from services.segmentation.store import Scratch, SegmentationStore
from services.shared.clock import Clock
from services.shared.errors import (
    AlreadyExists,
    FailedPrecondition,
    FieldViolation,
    NotFound,
    invalid,
)
from services.shared.holdout import in_holdout
from services.shared.identifiers import normalize_identifier
from services.shared.phases import phase

log = logging.getLogger(__name__)
# Profiles the reconcile found out of step in realtime definitions (entered/exited).
# The API's no-op until a process installs an SDK meter provider.
_DRIFT = metrics.get_meter("audiences.segmentation").create_counter(
    "audiences.realtime.drift",
    unit="{change}",
    description="membership changes and computed values the reconcile repaired in "
    "realtime audiences and computed traits",
)

DEFAULT_SAMPLE = 20
DEFAULT_PAGE = 100
MAX_PAGE = 1_000
WATCH_BATCH = 500
# GetAudiencePerformance looks back this many days unless given a start.
PERFORMANCE_DAYS = 30
BACKFILL_STEPS = 3  # evaluate dependencies' state, evaluate the definition, write the diff


@dataclass(frozen=True)
class PreviewResult:
    size: int
    sample: list[ProfileRef]
    would_enter: int
    would_exit: int
    enter_sample: list[ProfileRef]
    exit_sample: list[ProfileRef]
    evaluated_at_us: int


@dataclass(frozen=True)
class ComputedPreview:
    values: list[tuple[ProfileRef, Any]]
    profiles: int
    evaluated_at_us: int


@dataclass(frozen=True)
class MembersPage:
    members: list[tuple[ProfileRef, int]]
    next_page_token: str
    total: int


AUDIENCE = "audience"
COMPUTED_TRAIT = "computed_trait"
# A failure reason is shown to operators; an SQL error's text can be long.
MAX_REASON_CHARS = 500


@dataclass(frozen=True)
class RecomputeFailure:
    """An audience or computed trait (`kind`) that a recompute could not evaluate."""

    kind: str  # AUDIENCE | COMPUTED_TRAIT
    key: str
    reason: str


@dataclass(frozen=True)
class Drift:
    """What a recompute changed in one realtime audience or computed trait (`kind`):
    what the realtime worker should already have written (drift it repaired)."""

    kind: str  # AUDIENCE | COMPUTED_TRAIT
    key: str
    entered: int  # members that entered; profiles whose computed value changed
    exited: int  # members that exited; profiles whose computed value went


@dataclass(frozen=True)
class RecomputeResult:
    entered: int
    exited: int
    audiences: int  # recomputed
    failures: tuple[RecomputeFailure, ...] = ()
    # Realtime definitions whose stored state the recompute changed.
    drift: tuple[Drift, ...] = ()


def failure_reason(error: BaseException) -> str:
    """What went wrong, for the operator: the exception's type and first line (the
    driver's own message for a database error, not the whole statement)."""
    cause = getattr(error, "orig", None) or error
    lines = str(cause).strip().splitlines()
    text = f"{type(cause).__name__}: {lines[0]}" if lines else type(cause).__name__
    return text[:MAX_REASON_CHARS]


@dataclass(frozen=True)
class Explained:
    member: bool
    root: ExplainedNode
    profile: ProfileRef


@dataclass(frozen=True)
class History:
    changes: list[tuple[Change, ProfileRef]]
    member_at: bool


def _sample_size(limit: int, field: str) -> int | None:
    """How many to return: 0 means the default, -1 every one (None)."""
    if limit < -1:
        raise invalid(field, "must be -1 (every member), 0 (the default) or a positive number")
    if limit == -1:
        return None
    return limit or DEFAULT_SAMPLE


def _page_token(audience_id: int, after: int) -> str:
    return base64.urlsafe_b64encode(orjson.dumps([audience_id, after])).decode()


def _read_page_token(token: str, audience_id: int) -> int:
    if not token:
        return 0
    try:
        found = orjson.loads(base64.urlsafe_b64decode(token.encode()))
        owner, after = found
        if owner != audience_id or not isinstance(after, int):
            raise ValueError
    except (ValueError, TypeError, orjson.JSONDecodeError):
        raise invalid("page_token", "not a page token of this audience's member list") from None
    return after


@dataclass
class HotRebuild:
    """What a hot-state rebuild wrote for one workspace."""

    audiences: int = 0
    memberships: int = 0
    computed_traits: int = 0
    values: int = 0

    def __str__(self) -> str:
        return (
            f"{self.audiences} audiences ({self.memberships} memberships), "
            f"{self.computed_traits} computed traits ({self.values} values)"
        )


class Segmentation:
    """Audiences and computed traits of every workspace, behind the API."""

    def __init__(
        self,
        store: SegmentationStore,
        hot: HotState,
        clock: Clock,
        watch_poll_seconds: float = 0.2,
    ) -> None:
        self._store = store
        self._hot = hot
        self._clock = clock
        self._watch_poll = watch_poll_seconds
        self._tasks: set[asyncio.Task[None]] = set()
        # One evaluate-and-write at a time per workspace in this process; across
        # processes the store's per-workspace sequence row serialises the writes.
        self._locks: dict[str, asyncio.Lock] = {}

    def _lock(self, ws: str) -> asyncio.Lock:
        return self._locks.setdefault(ws, asyncio.Lock())

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)  # keep a reference until done, or the task may vanish
        task.add_done_callback(self._tasks.discard)

    async def idle(self) -> None:
        """Wait for every backfill started so far (used on shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    # ------------------------------------------------------------------ checks

    async def _check_audience(
        self,
        ws: str,
        raw: Any,
        prefix: str,
        key: str | None,
        account_level: bool,
        violations: list[FieldViolation],
        realtime: bool = False,
    ) -> None:
        stored = await self._store.audience_definitions(ws)
        computed = {c.key for c in await self._store.list_computed(ws)}
        predictions = await self._store.prediction_keys(ws, prediction_refs_raw(raw))
        others = {k: a.definition for k, a in stored.items()}
        found = audience_violations(
            raw,
            prefix,
            key=key,
            audiences=others,
            computed_keys=computed,
            prediction_keys=predictions,
        )
        if not found:
            account_audiences = {k for k, a in stored.items() if a.account_level}
            found = account_violations(
                raw, prefix, account_level=account_level, account_audiences=account_audiences
            )
        if not found:
            found = context_violations(
                raw, prefix, audiences=others, account_level=account_level, realtime=realtime
            )
        if not found and key is not None and key in stored:
            # Stored members cannot turn into per-request answers (or back) in place:
            # the memberships, change log and syncs of the one would be wrong for the other.
            was = key in context_keys(others | {key: stored[key].definition})
            now = key in context_keys(others | {key: raw})
            if was != now:
                found = [
                    FieldViolation(
                        prefix,
                        "an audience cannot change between a context audience (evaluated per"
                        " request) and a stored one: create a new audience instead",
                    )
                ]
        violations.extend(found)

    async def _audience(self, ws: str, key: str, field: str = "key") -> AudienceRecord:
        if not key:
            raise invalid(field, "is required")
        found = await self._store.get_audience(ws, key)
        if found is None:
            raise NotFound(f"audience {key!r} not found in this workspace")
        return found

    def _now(self, as_of_us: int | None) -> int:
        return as_of_us if as_of_us is not None else self._clock.now_us()

    # ------------------------------------------------------------------ audiences

    async def create_audience(
        self,
        ws: str,
        *,
        key: str,
        name: str,
        description: str,
        definition: bytes,
        account_level: bool,
        skip_backfill: bool,
        realtime: bool = False,
        holdout_share: float = 0.0,
        goal: bytes = b"",
    ) -> AudienceRecord:
        """Save a new audience and, unless `skip_backfill`, start computing its members
        from history in the background (state BACKFILLING, then LIVE). A `realtime`
        audience is also kept up to date per event by the realtime worker."""
        violations: list[FieldViolation] = []
        check_key(key, "audience.key", violations)
        check_holdout_share(holdout_share, "audience.holdout_share", violations)
        parsed_goal = parse_goal(goal, "audience.goal", violations) if goal else None
        check_name(name, "audience.name", violations)
        raw = decode_json(definition, "audience.definition", violations)
        if raw is not None:
            await self._check_audience(
                ws, raw, "audience.definition", key or None, account_level, violations, realtime
            )
        reject(violations)
        if await self._store.get_audience(ws, key) is not None:
            raise AlreadyExists(f"audience {key!r} already exists")
        stored = {k: a.definition for k, a in (await self._store.audience_definitions(ws)).items()}
        # A context audience has nothing to backfill: it is live once published.
        per_request = key in context_keys({**stored, key: raw})
        record = await self._store.create_audience(
            ws,
            key=key,
            name=name or key,
            description=description,
            definition=raw,
            account_level=account_level,
            state=LIVE if skip_backfill or per_request else BACKFILLING,
            now_us=self._clock.now_us(),
            realtime=realtime,
            holdout_share=holdout_share,
            goal=parsed_goal,
        )
        if per_request or holdout_share or parsed_goal:
            await self.publish_request_config(ws)
        if not per_request and not skip_backfill:
            self._spawn(self._backfill(ws, record))
        return record

    async def get_audience(self, ws: str, key: str) -> AudienceRecord:
        """The audience with `key`."""
        return await self._audience(ws, key)

    async def list_audiences(
        self, ws: str, page_size: int, page_token: str
    ) -> tuple[list[AudienceRecord], str]:
        """A page of audiences by key, and the token of the next page ('' at the end)."""
        limit = self._page_size(page_size)
        after = self._key_token(page_token)
        found = await self._store.list_audiences(ws, after, limit + 1)
        more = len(found) > limit
        page = found[:limit]
        token = base64.urlsafe_b64encode(page[-1].key.encode()).decode() if more else ""
        return page, token

    async def update_audience(
        self,
        ws: str,
        *,
        key: str,
        name: str,
        description: str,
        definition: bytes,
        realtime: bool | None = None,
        holdout_share: float | None = None,
        goal: bytes | None = None,
    ) -> AudienceRecord:
        """Replace what is given (empty fields and a None `realtime`, `holdout_share`
        or `goal` are kept; ``b"{}"`` clears the goal). A
        changed definition becomes the next version: the live version keeps serving
        while it backfills, then the new one takes over and only the differences are
        emitted."""
        audience = await self._audience(ws, key, "audience.key")
        violations: list[FieldViolation] = []
        check_name(name, "audience.name", violations)
        if holdout_share is not None:
            check_holdout_share(holdout_share, "audience.holdout_share", violations)
        parsed_goal = None
        if goal:
            parsed_goal = parse_goal(goal, "audience.goal", violations)
        raw = None
        if definition:
            raw = decode_json(definition, "audience.definition", violations)
            if raw is not None:
                await self._check_audience(
                    ws,
                    raw,
                    "audience.definition",
                    key,
                    audience.account_level,
                    violations,
                    audience.realtime if realtime is None else realtime,
                )
        reject(violations)
        changed = raw is not None and raw != audience.definition
        stored = {k: a.definition for k, a in (await self._store.audience_definitions(ws)).items()}
        per_request = key in context_keys(stored)
        record = await self._store.update_audience(
            ws,
            audience,
            name=name or audience.name,
            description=description or audience.description,
            definition=raw if changed else None,
            state=LIVE if per_request else BACKFILLING,
            now_us=self._clock.now_us(),
            realtime=realtime,
            holdout_share=holdout_share,
            goal=parsed_goal,
        )
        if per_request or holdout_share is not None or goal:
            await self.publish_request_config(ws)
        if not per_request and changed:
            self._spawn(self._backfill(ws, record))
        return record

    async def delete_audience(self, ws: str, key: str) -> None:
        """Delete an audience no other audience refers to; its members exit."""
        audience = await self._audience(ws, key)
        stored = await self._store.audience_definitions(ws)
        users = dependents(key, {k: a.definition for k, a in stored.items()}, audience_refs_raw)
        if users:
            raise FailedPrecondition(
                f"audience {key!r} is referenced by {', '.join(users)}; change those first"
            )
        async with self._lock(ws):
            exited = await self._store.delete_audience(
                ws, audience.audience_id, self._clock.now_us()
            )
        if not audience.account_level:
            await self._hot.memberships(ws, key, {}, exited)
        await self.publish_request_config(ws)

    async def publish_request_config(self, ws: str) -> str:
        """Publish the workspace's context audiences (definitions in dependency order)
        to the hot state, where the profile service compiles them once per version;
        called after every change of an audience and by rebuild-hot-state."""
        stored = await self._store.audience_definitions(ws)
        definitions = {k: a.definition for k, a in stored.items()}
        per_request = context_keys(definitions)
        ordered = [
            [k, definitions[k]] for k in dependency_order({k: definitions[k] for k in per_request})
        ]
        holdouts = {k: a.holdout_share for k, a in stored.items() if a.holdout_share > 0}
        # Audiences with a goal: GetProfile's log_exposure logs exposures of these.
        measured = sorted(k for k, a in stored.items() if a.goal)
        return await self._hot.publish_audience_config(
            ws, {"context": ordered, "holdouts": holdouts, "measured": measured}
        )

    async def audience_performance(
        self, ws: str, *, audience_key: str, start_us: int | None, end_us: int | None
    ) -> Performance:
        """Exposed and converted people per group (treatment, holdout) by day of first
        exposure in [start, end) (default: the 30 days up to now), with lift and the
        sample-ratio check (services/segmentation/performance.py)."""
        audience = await self._audience(ws, audience_key, "audience_key")
        if not audience.goal:
            raise FailedPrecondition(
                f"audience {audience_key!r} has no goal: set Audience.goal to measure it"
            )
        now = self._clock.now_us()
        end = end_us if end_us is not None else now + 1
        start = start_us if start_us is not None else end - PERFORMANCE_DAYS * 86_400_000_000
        if start >= end:
            raise invalid("start", "must be before end")
        goal = audience.goal
        window = round(goal["within_hours"] * 3_600_000_000)
        filters = parse_audience({"event": {"name": goal["name"], "where": goal["where"]}})
        assert isinstance(filters, Event)
        first = await self._store.performance.first_exposures(ws, audience_key, start, end)
        if not first:
            return summarize(audience_key, audience.holdout_share, start, end, [])
        events = await self._store.performance.goal_events(
            ws, goal, first, min(first.values()), min(max(first.values()) + window, now)
        )
        people = []
        for pid, at in first.items():
            converted = any(
                at < t <= at + window
                and all(
                    match_value(f.op, get_property(props, f.property), f.value)
                    for f in filters.where
                )
                for t, props in events.get(pid, ())
            )
            held = in_holdout(audience_key, pid, audience.holdout_share)
            people.append((at, held, converted))
        return summarize(audience_key, audience.holdout_share, start, end, people)

    async def _per_request(self, ws: str, audience: AudienceRecord) -> bool:
        stored = await self._store.audience_definitions(ws)
        return audience.key in context_keys({k: a.definition for k, a in stored.items()})

    async def _no_stored_members(self, ws: str, audience: AudienceRecord) -> None:
        if await self._per_request(ws, audience):
            raise FailedPrecondition(
                f"audience {audience.key!r} is a context audience: it has no stored members;"
                " GetProfile with a context tells whether a request qualifies, and"
                " ExplainMembership with a context explains one request"
            )

    async def _backfill(self, ws: str, audience: AudienceRecord) -> None:
        """Compute a version's members from history and swap them in."""
        key, version = audience.key, audience.version
        try:
            async with self._lock(ws):
                current = await self._store.get_audience(ws, key)
                if current is None or current.version != version:
                    return  # deleted or superseded: the newer backfill does the work
                await self._progress(audience, BACKFILLING, 1, "evaluating")
                now = self._clock.now_us()
                members = await self._store.evaluate_audience(
                    ws, audience.definition, now, audience.account_level
                )
                await self._progress(audience, BACKFILLING, 2, f"writing {len(members)} members")
                await self._apply(ws, audience, version, members, now)
                log.info("audience %s v%d: live with %d members", key, version, len(members))
        except Exception as error:
            log.exception("backfill of audience %s v%d failed", key, version)
            await self._fail(audience, failure_reason(error))

    async def _progress(self, audience: AudienceRecord, state: str, done: int, stage: str) -> None:
        log.info("audience %s v%d: %s (%d/%d)", audience.key, audience.version, stage, done, 3)
        await self._store.set_progress(
            audience.audience_id, state, Progress(done, BACKFILL_STEPS, stage)
        )

    async def _fail(self, audience: AudienceRecord, reason: str) -> None:
        """Leave the audience FAILED with `reason`; its members stay as they were."""
        await self._store.set_progress(
            audience.audience_id, FAILED, Progress(0, BACKFILL_STEPS, "failed"), reason
        )

    async def _apply(
        self, ws: str, audience: AudienceRecord, version: int, members: set[int], now: int
    ) -> tuple[int, int]:
        done = Progress(BACKFILL_STEPS, BACKFILL_STEPS, "done")
        diff = await self._store.apply_members(
            ws, audience.audience_id, version, members, now, done
        )
        if not audience.account_level:  # accounts have no hot state: profiles do
            await self._hot_memberships(ws, audience.key, diff, now)
        return len(diff.entered), len(diff.exited)

    async def _hot_memberships(self, ws: str, key: str, diff: Diff, now: int) -> None:
        """Mirror a committed diff: entries at `now`, exits, and memberships that moved
        from merged-away profiles to their survivor (at the person's first entry)."""
        entered = dict.fromkeys(diff.entered, now)
        entered.update(diff.moved)
        await self._hot.memberships(ws, key, entered, (*diff.exited, *diff.absorbed))

    # ------------------------------------------------------------------ computed traits

    async def create_computed_trait(
        self,
        ws: str,
        *,
        key: str,
        name: str,
        definition: bytes,
        skip_backfill: bool,
        realtime: bool = False,
    ) -> ComputedTraitRecord:
        """Save a computed trait and, unless `skip_backfill`, compute every profile's
        value in the background."""
        violations: list[FieldViolation] = []
        check_key(key, "computed_trait.key", violations)
        check_name(name, "computed_trait.name", violations)
        raw = decode_json(definition, "computed_trait.definition", violations)
        if raw is not None:
            violations += computed_violations(
                raw, "computed_trait.definition", key=key, computed=await self._computed_defs(ws)
            )
        reject(violations)
        if await self._store.get_computed(ws, key) is not None:
            raise AlreadyExists(f"computed trait {key!r} already exists")
        record = await self._store.save_computed(
            ws,
            key=key,
            name=name or key,
            definition=raw,
            state=LIVE if skip_backfill else BACKFILLING,
            now_us=self._clock.now_us(),
            existing=None,
            realtime=realtime,
        )
        if not skip_backfill:
            self._spawn(self._backfill_computed(ws, record))
        return record

    async def get_computed_trait(self, ws: str, key: str) -> ComputedTraitRecord:
        """The computed trait with `key`."""
        if not key:
            raise invalid("key", "is required")
        found = await self._store.get_computed(ws, key)
        if found is None:
            raise NotFound(f"computed trait {key!r} not found in this workspace")
        return found

    async def list_computed_traits(
        self, ws: str, page_size: int, page_token: str
    ) -> tuple[list[ComputedTraitRecord], str]:
        """A page of computed traits by key and the next page's token."""
        limit = self._page_size(page_size)
        found = await self._store.list_computed(ws, self._key_token(page_token), limit + 1)
        page = found[:limit]
        more = len(found) > limit
        return page, base64.urlsafe_b64encode(page[-1].key.encode()).decode() if more else ""

    async def update_computed_trait(
        self,
        ws: str,
        *,
        key: str,
        name: str,
        definition: bytes,
        realtime: bool | None = None,
    ) -> ComputedTraitRecord:
        """Replace the name and/or definition (and the realtime flag unless None); a
        new definition is recomputed."""
        existing = await self.get_computed_trait(ws, key)
        violations: list[FieldViolation] = []
        check_name(name, "computed_trait.name", violations)
        raw = existing.definition
        if definition:
            raw = decode_json(definition, "computed_trait.definition", violations)
            if raw is not None:
                violations += computed_violations(
                    raw,
                    "computed_trait.definition",
                    key=key,
                    computed=await self._computed_defs(ws),
                )
        reject(violations)
        record = await self._store.save_computed(
            ws,
            key=key,
            name=name or existing.name,
            definition=raw,
            state=BACKFILLING,
            now_us=self._clock.now_us(),
            existing=existing,
            realtime=realtime,
        )
        if record.version != existing.version:
            self._spawn(self._backfill_computed(ws, record))
        return record

    async def delete_computed_trait(self, ws: str, key: str) -> None:
        """Delete a computed trait no audience or other computed trait reads."""
        await self.get_computed_trait(ws, key)
        stored = await self._store.audience_definitions(ws)
        users = dependents(key, {k: a.definition for k, a in stored.items()}, computed_refs_raw)
        if users:
            raise FailedPrecondition(
                f"computed trait {key!r} is used by audiences {', '.join(users)}"
            )
        readers = dependents(key, await self._computed_defs(ws), computed_dependencies_raw)
        if readers:
            raise FailedPrecondition(
                f"computed trait {key!r} is used by computed traits {', '.join(readers)}"
            )
        pids = await self._store.delete_computed(ws, key)
        await self._hot.computed(ws, key, {}, pids)

    async def _computed_defs(self, ws: str) -> dict[str, Any]:
        """Every stored computed trait's definition by key."""
        return {c.key: c.definition for c in await self._store.list_computed(ws)}

    async def _backfill_computed(self, ws: str, record: ComputedTraitRecord) -> None:
        try:
            async with self._lock(ws):
                current = await self._store.get_computed(ws, record.key)
                if current is None or current.version != record.version:
                    return
                await self._recompute_computed(ws, record, self._clock.now_us())
                await self._store.set_computed_state(ws, record.key, LIVE)
                log.info("computed trait %s v%d: done", record.key, record.version)
        except Exception as error:
            log.exception("backfill of computed trait %s failed", record.key)
            await self._store.set_computed_state(ws, record.key, FAILED, failure_reason(error))

    async def _recompute_computed(
        self, ws: str, record: ComputedTraitRecord, now: int
    ) -> tuple[int, int]:
        """Recompute and write one computed trait; returns (values changed, removed)."""
        values = await self._store.evaluate_computed(ws, record.definition, now)
        changed, removed = await self._store.apply_computed(ws, record.key, values, now)
        await self._hot.computed(ws, record.key, changed, removed)
        return len(changed), len(removed)

    # ------------------------------------------------------------------ evaluation

    async def preview(
        self,
        ws: str,
        *,
        definition: bytes,
        audience_key: str,
        as_of_us: int | None,
        sample_limit: int,
        account_level: bool,
    ) -> PreviewResult:
        """Size and sample of an unsaved definition at `as_of_us` (default now); for an
        edit of a live audience also who would enter and exit. Nothing is saved."""
        violations: list[FieldViolation] = []
        raw = decode_json(definition, "definition", violations)
        audience = None
        if audience_key:
            audience = await self._audience(ws, audience_key, "audience_key")
            account_level = audience.account_level  # an edit keeps the audience's level
        if raw is not None:
            await self._check_audience(
                ws, raw, "definition", audience_key or None, account_level, violations
            )
        reject(violations)
        stored = {k: a.definition for k, a in (await self._store.audience_definitions(ws)).items()}
        if audience_key in context_keys({**stored, audience_key or "": raw}):
            raise FailedPrecondition(
                "a context audience (one with context conditions, or referring to one) has no"
                " stored members to preview: GetProfile with a context evaluates it per request"
            )
        limit = _sample_size(sample_limit, "sample_limit")
        now = self._now(as_of_us)
        if as_of_us is None:
            members = await self._store.evaluate_audience(ws, raw, now, account_level)
        else:
            members = await self._evaluate_as_of(ws, raw, now, account_level)
        enter: list[int] = []
        leave: list[int] = []
        if audience is not None:
            current = set(await self._store.members(audience.audience_id))
            enter, leave = sorted(members - current), sorted(current - members)
        ordered = sorted(members)
        return PreviewResult(
            size=len(members),
            sample=await self._store.refs(ws, ordered[:limit]),
            would_enter=len(enter),
            would_exit=len(leave),
            enter_sample=await self._store.refs(ws, enter[:limit]),
            exit_sample=await self._store.refs(ws, leave[:limit]),
            evaluated_at_us=now,
        )

    async def _evaluate_as_of(
        self, ws: str, raw: Any, now: int, account_level: bool = False
    ) -> set[int]:
        """Evaluate with every audience and computed trait it depends on (transitively)
        first evaluated at the same instant, in a transaction that is rolled back: the
        stored memberships and values are those of the last recompute, not of `now`."""
        stored = await self._store.audience_definitions(ws)
        needed: dict[str, Any] = {}
        pending = sorted(audience_refs_raw(raw))
        while pending:
            k = pending.pop()
            if k in needed or k not in stored:
                continue
            needed[k] = stored[k].definition
            pending += sorted(audience_refs_raw(needed[k]))
        computed_keys = computed_refs_raw(raw).union(
            *(computed_refs_raw(d) for d in needed.values())
        )
        computed = await self._computed_defs(ws)
        if account_level:
            await self._store.accounts.register(ws)  # ids outlive the scratch rollback
        async with self._store.scratch(ws) as scratch:
            await self._computed_as_of(scratch, computed_keys, computed, now)
            for k in dependency_order(needed):
                members = await scratch.evaluate_audience(needed[k], now)
                await scratch.replace_members(stored[k].audience_id, members)
            return await scratch.evaluate_audience(raw, now, account_level)

    @staticmethod
    async def _computed_as_of(
        scratch: Scratch, keys: Collection[str], computed: Mapping[str, Any], now: int
    ) -> None:
        """Evaluate the computed traits `keys` and those they reference (transitively)
        at `now` into `scratch`, each after the ones it references."""
        needed: dict[str, Any] = {}
        pending = sorted(keys)
        while pending:
            k = pending.pop()
            if k in needed or k not in computed:
                continue
            needed[k] = computed[k]
            pending += sorted(computed_dependencies_raw(needed[k]))
        for k in dependency_order(needed, computed_dependencies_raw, "computed trait"):
            await scratch.replace_computed(k, await scratch.evaluate_computed(needed[k], now))

    async def preview_computed_trait(
        self, ws: str, *, definition: bytes, as_of_us: int | None, sample_limit: int
    ) -> ComputedPreview:
        """Values of an unsaved computed trait per profile at `as_of_us` (default now).
        Filters comparing with other computed traits read their stored values, or at
        `as_of_us` their values evaluated then."""
        violations: list[FieldViolation] = []
        raw = decode_json(definition, "definition", violations)
        computed = await self._computed_defs(ws)
        if raw is not None:
            violations += computed_violations(raw, "definition", computed=computed)
        reject(violations)
        limit = _sample_size(sample_limit, "sample_limit")
        now = self._now(as_of_us)
        if as_of_us is None:
            values = await self._store.evaluate_computed(ws, raw, now)
        else:
            async with self._store.scratch(ws) as scratch:
                await self._computed_as_of(scratch, computed_dependencies_raw(raw), computed, now)
                values = await scratch.evaluate_computed(raw, now)
        chosen = sorted(values)[:limit]
        refs = await self._store.refs(ws, chosen)
        return ComputedPreview(
            values=[(ref, values[ref.profile_id]) for ref in refs],
            profiles=len(values),
            evaluated_at_us=now,
        )

    async def recompute(
        self, ws: str, *, audience_key: str, as_of_us: int | None
    ) -> RecomputeResult:
        """Re-evaluate one audience, or every computed trait and then every audience in
        dependency order, at `as_of_us` (default now); write and log the differences.

        Each one is evaluated in isolation: one that fails is left FAILED with its
        reason and listed in the result, the others are recomputed; an audience that
        references a failed one keeps its members and is listed as not recomputed."""
        now = self._now(as_of_us)
        run = _Run()
        async with self._lock(ws):
            if audience_key:
                one = await self._audience(ws, audience_key, "audience_key")
                await self._no_stored_members(ws, one)
                layers = [[one]]
            else:
                records = {c.key: c for c in await self._store.list_computed(ws)}
                # Each after the computed traits its filters compare with.
                for k in dependency_order(
                    {k: c.definition for k, c in records.items()},
                    computed_dependencies_raw,
                    "computed trait",
                ):
                    if not run.blocked_computed(records[k]):
                        await self._recompute_computed_isolated(ws, records[k], now, run)
                stored = await self._store.audience_definitions(ws)
                # Context audiences have no stored members: nothing to recompute.
                for k in context_keys({k: a.definition for k, a in stored.items()}):
                    del stored[k]
                order = dependency_layers({k: a.definition for k, a in stored.items()})
                layers = [[stored[k] for k in layer] for layer in order]
            await self._recompute_layers(ws, layers, now, run)
        return RecomputeResult(
            run.entered, run.exited, run.recomputed, tuple(run.failures), tuple(run.drift)
        )

    async def _recompute_layers(
        self, ws: str, layers: list[list[AudienceRecord]], now: int, run: _Run
    ) -> None:
        for layer in layers:
            # The audiences a layer references were written by the layers before it.
            batch = [a for a in layer if not run.blocked(a)]
            await self._recompute_users(ws, [a for a in batch if not a.account_level], now, run)
            for audience in batch:
                if audience.account_level:  # one by one (sql_accounts.py)
                    await self._recompute_account_level(ws, audience, now, run)

    async def rescored(self, ws: str, prediction_key: str) -> RecomputeResult:
        """A prediction's scores were replaced: recompute, now, the audiences with a
        ``prediction`` condition on it and every audience that reads one of those, in
        dependency order, so predictive cohorts log their entered/exited changes at once
        instead of at the next reconcile."""
        now = self._now(None)
        run = _Run()
        async with self._lock(ws):
            stored = await self._store.audience_definitions(ws)
            affected = {
                k for k, a in stored.items() if prediction_key in prediction_refs_raw(a.definition)
            }
            grew = bool(affected)
            while grew:  # audiences reading affected audiences, transitively
                more = {
                    k
                    for k, a in stored.items()
                    if k not in affected and audience_refs_raw(a.definition) & affected
                }
                affected |= more
                grew = bool(more)
            order = dependency_layers({k: stored[k].definition for k in affected})
            await self._recompute_layers(
                ws, [[stored[k] for k in layer] for layer in order], now, run
            )
        return RecomputeResult(
            run.entered, run.exited, run.recomputed, tuple(run.failures), tuple(run.drift)
        )

    async def _recompute_computed_isolated(
        self, ws: str, record: ComputedTraitRecord, now: int, run: _Run
    ) -> None:
        try:
            changed, removed = await self._recompute_computed(ws, record, now)
        except Exception as error:
            log.exception("recompute of computed trait %s failed", record.key)
            reason = failure_reason(error)
            await self._store.set_computed_state(ws, record.key, FAILED, reason)
            run.failed(COMPUTED_TRAIT, record.key, reason)
        else:
            await self._store.set_computed_state(ws, record.key, LIVE)
            if record.realtime and (changed or removed):
                run.drift.append(Drift(COMPUTED_TRAIT, record.key, changed, removed))

    async def _recompute_users(
        self, ws: str, users: list[AudienceRecord], now: int, run: _Run
    ) -> None:
        """Recompute user-level audiences that do not reference each other: one rollup
        pass over the events for all of them, diffed and written in the database; if
        that fails, one by one, so only the audience at fault fails."""
        if not users:
            return
        done = Progress(BACKFILL_STEPS, BACKFILL_STEPS, "done")
        try:
            diffs = await self._store.recompute_audiences(ws, users, now, done)
        except Exception as error:
            if len(users) == 1:
                log.exception("recompute of audience %s failed", users[0].key)
                reason = failure_reason(error)
                await self._fail(users[0], reason)
                run.failed(AUDIENCE, users[0].key, reason)
                return
            log.warning("recompute of %d audiences together failed; one by one", len(users))
            for audience in users:
                await self._recompute_users(ws, [audience], now, run)
            return
        # After the commit: the hot state never shows a membership whose change record
        # is not committed.
        with phase("hot state"):
            for audience, diff in zip(users, diffs, strict=True):
                await self._hot_memberships(ws, audience.key, diff, now)
                run.done(len(diff.entered), len(diff.exited))
                if audience.realtime and (diff.entered or diff.exited):
                    run.drift.append(
                        Drift(AUDIENCE, audience.key, len(diff.entered), len(diff.exited))
                    )

    async def _recompute_account_level(
        self, ws: str, audience: AudienceRecord, now: int, run: _Run
    ) -> None:
        try:
            members = await self._store.evaluate_audience(
                ws, audience.definition, now, account_level=True
            )
            came, left = await self._apply(ws, audience, audience.version, members, now)
        except Exception as error:
            log.exception("recompute of account-level audience %s failed", audience.key)
            reason = failure_reason(error)
            await self._fail(audience, reason)
            run.failed(AUDIENCE, audience.key, reason)
            return
        run.done(came, left)

    async def rebuild_hot_state(self, ws: str) -> HotRebuild:
        """Write the workspace's stored memberships and computed values to the hot
        state again, replacing whatever it held of them."""
        rebuilt = HotRebuild()
        async with self._lock(ws):
            await self._hot.clear(ws)
            stored = await self._store.audience_definitions(ws)
            per_request = context_keys({k: a.definition for k, a in stored.items()})
            for audience in stored.values():
                if audience.account_level:  # accounts have no hot state: profiles do
                    continue
                if audience.key in per_request:  # no stored members
                    continue
                members = await self._store.members(audience.audience_id)
                await self._hot.memberships(ws, audience.key, members, ())
                rebuilt.audiences += 1
                rebuilt.memberships += len(members)
            for record in await self._store.list_computed(ws):
                values = await self._store.computed_values(ws, record.key)
                await self._hot.computed(ws, record.key, values, ())
                rebuilt.computed_traits += 1
                rebuilt.values += sum(1 for value in values.values() if value is not None)
            await self.publish_request_config(ws)
        return rebuilt

    async def workspaces(self) -> list[str]:
        """Workspaces that have audiences or computed traits."""
        return await self._store.workspaces()

    async def reconcile(self, ws: str) -> RecomputeResult:
        """The periodic batch pass: everything recomputed at the clock's now. What it
        changed in realtime definitions is drift between the realtime worker and batch
        (repaired by this very write): counted in the ``audiences.realtime.drift``
        metric and logged with its counts per definition. A worker lagging behind the
        stream shows up here too (the reconcile got to those events first)."""
        result = await self.recompute(ws, audience_key="", as_of_us=None)
        if result.drift:
            entered = sum(d.entered for d in result.drift)
            exited = sum(d.exited for d in result.drift)
            _DRIFT.add(entered, {"workspace_id": ws, "direction": "entered"})
            _DRIFT.add(exited, {"workspace_id": ws, "direction": "exited"})
            log.warning(
                "realtime drift repaired in workspace %s: %d definitions, +%d -%d (%s)",
                ws,
                len(result.drift),
                entered,
                exited,
                ", ".join(f"{d.kind} {d.key} +{d.entered} -{d.exited}" for d in result.drift),
            )
        return result

    # ------------------------------------------------------------------ members

    def _page_size(self, page_size: int) -> int:
        if page_size < 0:
            raise invalid("page_size", "must not be negative")
        return min(page_size or DEFAULT_PAGE, MAX_PAGE)

    @staticmethod
    def _key_token(token: str) -> str:
        if not token:
            return ""
        try:
            return base64.urlsafe_b64decode(token.encode()).decode()
        except (ValueError, UnicodeDecodeError):
            raise invalid("page_token", "not a page token of this list") from None

    async def list_members(
        self, ws: str, *, audience_key: str, page_size: int, page_token: str
    ) -> MembersPage:
        """A page of members by profile id with their identifiers. The token names the
        last profile returned, so paging is stable while members enter and exit."""
        audience = await self._audience(ws, audience_key, "audience_key")
        await self._no_stored_members(ws, audience)
        limit = self._page_size(page_size)
        after = _read_page_token(page_token, audience.audience_id)
        rows, total = await self._store.members_page(ws, audience.audience_id, after, limit + 1)
        page = rows[:limit]
        refs = await self._store.refs(ws, [m.profile_id for m in page])
        token = _page_token(audience.audience_id, page[-1].profile_id) if len(rows) > limit else ""
        return MembersPage(
            members=[(ref, m.entered_at_us) for ref, m in zip(refs, page, strict=True)],
            next_page_token=token,
            total=total,
        )

    async def _profile(self, ws: str, id_type: str, id_value: str) -> int:
        if not id_type or not id_value:
            raise invalid("identifier", "type and value are required")
        pid = await self._store.resolve(ws, id_type, normalize_identifier(id_type, id_value))
        if pid is None:
            raise NotFound(f"no profile with {id_type} {id_value!r}")
        return pid

    async def _member(self, ws: str, audience: AudienceRecord, id_type: str, id_value: str) -> int:
        """The member id an identifier names in `audience`: a profile, or for an
        account-level audience an account named by its group_id."""
        if not audience.account_level:
            return await self._profile(ws, id_type, id_value)
        if id_type != ACCOUNT_ID_TYPE:
            raise invalid(
                "identifier.type",
                f"members of account-level audience {audience.key!r} are accounts: "
                f"use type {ACCOUNT_ID_TYPE!r}",
            )
        if not id_value:
            raise invalid("identifier.value", "is required")
        found = await self._store.accounts.resolve(ws, id_value)
        if found is None:
            raise NotFound(f"no account with group_id {id_value!r}")
        return found

    async def _profile_data(self, ws: str, pid: int) -> ProfileData:
        facts = await self._store.facts(ws, pid)
        return ProfileData(
            events=facts.events,
            traits=facts.traits,
            computed=facts.computed,
            audiences=facts.audiences,
            predictions=facts.predictions,
        )

    async def explain_membership(
        self,
        ws: str,
        *,
        audience_key: str,
        id_type: str,
        id_value: str,
        as_of_us: int | None,
        context: Mapping[str, Any] | None = None,
    ) -> Explained:
        """Why the profile is (or is not) in the audience at `as_of_us` (default now):
        the condition tree with each node's truth value and evidence. Audience and
        computed conditions read the stored memberships and values."""
        audience = await self._audience(ws, audience_key, "audience_key")
        pid = await self._member(ws, audience, id_type, id_value)
        now = self._now(as_of_us)
        if audience.account_level:
            traits, users = await self._store.accounts.facts(ws, pid, now)
            members = [await self._profile_data(ws, user) for user in users]
            profile = ProfileData(traits=traits, members=members)
        else:
            profile = await self._profile_data(ws, pid)
        if context is not None:
            # The request being explained (context conditions); stored audiences and
            # computed traits are read as stored, like GetProfile does, and the context
            # audiences this request qualifies for are decided first, in dependency
            # order, so a reference to one reads what GetProfile would answer.
            profile = dataclasses.replace(profile, context=context)
            stored = {
                k: a.definition for k, a in (await self._store.audience_definitions(ws)).items()
            }
            per_request = context_keys(stored)
            held = set(profile.audiences)
            for k in dependency_order({k: stored[k] for k in per_request}):
                if k != audience.key and evaluate(
                    parse_audience(stored[k]), dataclasses.replace(profile, audiences=held), now
                ):
                    held.add(k)
            profile = dataclasses.replace(profile, audiences=held)
        node = parse_audience(audience.definition)
        explanation = explain(node, profile, now)
        (ref,) = await self._store.refs(ws, [pid])
        return Explained(explanation.value, annotate(node, explanation), ref)

    async def membership_history(
        self, ws: str, *, audience_key: str, id_type: str, id_value: str, at_us: int | None
    ) -> History:
        """Every entered/exited record of the profile in the audience, and whether it
        was a member at `at_us`: the kind of the latest change dated at or before it."""
        audience = await self._audience(ws, audience_key, "audience_key")
        pid = await self._member(ws, audience, id_type, id_value)
        changes, merged_at = await self._store.history(ws, audience.audience_id, pid)
        (ref,) = await self._store.refs(ws, [pid])
        member_at = at_us is not None and member_at_instant(changes, pid, merged_at, at_us)
        return History([(_keyed(c, audience.key), _named(c, ref)) for c in changes], member_at)

    async def watch(
        self, ws: str, *, after_seq: int, audience_keys: Collection[str]
    ) -> AsyncIterator[tuple[Change, ProfileRef]]:
        """Changes after `after_seq`, forever: the change log is polled (it is durable and
        its seqs commit in order, so resuming from a seq never skips or repeats)."""
        if after_seq < 0:
            raise invalid("after_seq", "must not be negative")
        ids: list[int] | None = None
        if audience_keys:
            ids = []
            for i, key in enumerate(audience_keys):
                found = await self._store.get_audience(ws, key)
                if found is None:
                    raise invalid(f"audience_keys[{i}]", f"no audience {key!r}")
                ids.append(found.audience_id)
        last = after_seq
        while True:
            changes = await self._store.changes_after(ws, last, ids, WATCH_BATCH)
            if not changes:
                await asyncio.sleep(self._watch_poll)  # poll interval of the change log
                continue
            keys = await self._store.audience_keys(ws, {c.audience_id for c in changes})
            pids = sorted({c.profile_id for c in changes})
            refs = dict(zip(pids, await self._store.refs(ws, pids), strict=True))
            for c in changes:
                yield _keyed(c, keys.get(c.audience_id, "")), _named(c, refs[c.profile_id])
            last = changes[-1].seq


def member_at_instant(
    changes: Collection[Change], survivor: int, merged_at: Mapping[int, int], at_us: int
) -> bool:
    """Whether the person was a member at `at_us`, by their records up to then.

    The person is the survivor and the profiles merged into it (`merged_at`: when each
    was merged away), and their histories count as one: the person is a member when
    any of those profiles is, by the latest of its records at or before `at_us`. A
    record of the survivor dated at or after a profile's merge is also that profile's
    (from then on the survivor's record speaks for the whole person). Records are
    ordered by instant, then seq: a recompute as of an earlier instant (a backtest)
    writes records dated then, which belong at that point of the timeline.
    """
    ordered = sorted((c for c in changes if c.at_us <= at_us), key=lambda c: (c.at_us, c.seq))
    latest: dict[int, str] = {}
    for change in ordered:
        latest[change.profile_id] = change.kind
        if change.profile_id == survivor:
            for profile_id, since in merged_at.items():
                if change.at_us >= since:
                    latest[profile_id] = change.kind
    return ENTERED in latest.values()


class _Run:
    """What a recompute did so far: counts, failures, and what failed (so the audiences
    that reference it are not evaluated against stale members or values)."""

    def __init__(self) -> None:
        self.entered = self.exited = self.recomputed = 0
        self.failures: list[RecomputeFailure] = []
        self.drift: list[Drift] = []
        self._failed: dict[str, set[str]] = {AUDIENCE: set(), COMPUTED_TRAIT: set()}

    def done(self, entered: int, exited: int) -> None:
        self.entered += entered
        self.exited += exited
        self.recomputed += 1

    def failed(self, kind: str, key: str, reason: str) -> None:
        self.failures.append(RecomputeFailure(kind, key, reason))
        self._failed[kind].add(key)

    def blocked_computed(self, record: ComputedTraitRecord) -> bool:
        """Whether computed trait `record` compares with a failed one; if so it keeps
        its values and is recorded as not recomputed (blocking its own readers)."""
        bad = sorted(computed_dependencies_raw(record.definition) & self._failed[COMPUTED_TRAIT])
        if bad:
            self.failed(
                COMPUTED_TRAIT,
                record.key,
                f"not recomputed: it references computed trait {bad[0]!r}, which failed",
            )
        return bool(bad)

    def blocked(self, audience: AudienceRecord) -> bool:
        """Whether `audience` reads a failed audience or computed trait; if so it is
        recorded as not recomputed (and blocks its own dependents in turn)."""
        for kind, refs in (
            (AUDIENCE, audience_refs_raw(audience.definition)),
            (COMPUTED_TRAIT, computed_refs_raw(audience.definition)),
        ):
            bad = sorted(refs & self._failed[kind])
            if bad:
                what = "audience" if kind == AUDIENCE else "computed trait"
                self.failed(
                    AUDIENCE,
                    audience.key,
                    f"not recomputed: it references {what} {bad[0]!r}, which failed",
                )
                return True
        return False


def _keyed(change: Change, key: str) -> Change:
    return dataclasses.replace(change, audience_key=key)


def _named(change: Change, current: ProfileRef) -> ProfileRef:
    """Who a record names: the identifiers kept on it (an erased person's exit), else
    the person's current ones."""
    if change.identifiers is None:
        return current
    return ProfileRef(change.profile_id, change.identifiers)
