"""The segmentation domain: audiences and computed traits, their backfills, recomputes,
previews, explanations and the membership change log.

No grpc, protobuf or SQL here: the servicer translates requests into these calls, the
store (store.py) persists, the hot-state writer (hot.py) updates Redis. Evaluation
time is ``as_of`` when a call gives one, else the injected clock's now.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import AsyncIterator, Collection, Coroutine
from dataclasses import dataclass
from typing import Any

import orjson

from services.segmentation.accounts import ACCOUNT_ID_TYPE, account_violations
from services.segmentation.definitions import (
    audience_refs_raw,
    audience_violations,
    check_key,
    computed_refs_raw,
    computed_violations,
    decode_json,
    dependents,
    reject,
)
from services.segmentation.explaining import ExplainedNode, annotate
from services.segmentation.hot import HotState
from services.segmentation.language import (
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
    Member,
    ProfileRef,
    Progress,
)
from services.segmentation.reference import ProfileData, explain
from services.segmentation.store import SegmentationStore
from services.shared.clock import Clock
from services.shared.errors import (
    AlreadyExists,
    FailedPrecondition,
    FieldViolation,
    NotFound,
    invalid,
)
from services.shared.identifiers import normalize_identifier
from services.shared.phases import phase

log = logging.getLogger(__name__)

DEFAULT_SAMPLE = 20
DEFAULT_PAGE = 100
MAX_PAGE = 1_000
WATCH_BATCH = 500
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


@dataclass(frozen=True)
class RecomputeResult:
    entered: int
    exited: int
    audiences: int


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
    ) -> None:
        stored = await self._store.audience_definitions(ws)
        computed = {c.key for c in await self._store.list_computed(ws)}
        others = {k: a.definition for k, a in stored.items()}
        found = audience_violations(raw, prefix, key=key, audiences=others, computed_keys=computed)
        if not found:
            account_audiences = {k for k, a in stored.items() if a.account_level}
            found = account_violations(
                raw, prefix, account_level=account_level, account_audiences=account_audiences
            )
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
    ) -> AudienceRecord:
        """Save a new audience and, unless `skip_backfill`, start computing its members
        from history in the background (state BACKFILLING, then LIVE). A `realtime`
        audience is also kept up to date per event by the realtime worker."""
        violations: list[FieldViolation] = []
        check_key(key, "audience.key", violations)
        _check_realtime(realtime, account_level, violations)
        raw = decode_json(definition, "audience.definition", violations)
        if raw is not None:
            await self._check_audience(
                ws, raw, "audience.definition", key or None, account_level, violations
            )
        reject(violations)
        if await self._store.get_audience(ws, key) is not None:
            raise AlreadyExists(f"audience {key!r} already exists")
        record = await self._store.create_audience(
            ws,
            key=key,
            name=name or key,
            description=description,
            definition=raw,
            account_level=account_level,
            state=LIVE if skip_backfill else BACKFILLING,
            now_us=self._clock.now_us(),
            realtime=realtime,
        )
        if not skip_backfill:
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
    ) -> AudienceRecord:
        """Replace what is given (empty fields and a None `realtime` are kept). A
        changed definition becomes the next version: the live version keeps serving
        while it backfills, then the new one takes over and only the differences are
        emitted."""
        audience = await self._audience(ws, key, "audience.key")
        violations: list[FieldViolation] = []
        _check_realtime(bool(realtime), audience.account_level, violations)
        raw = None
        if definition:
            raw = decode_json(definition, "audience.definition", violations)
            if raw is not None:
                await self._check_audience(
                    ws, raw, "audience.definition", key, audience.account_level, violations
                )
        reject(violations)
        changed = raw is not None and raw != audience.definition
        record = await self._store.update_audience(
            ws,
            audience,
            name=name or audience.name,
            description=description or audience.description,
            definition=raw if changed else None,
            state=BACKFILLING,
            now_us=self._clock.now_us(),
            realtime=realtime,
        )
        if changed:
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
        except Exception:
            log.exception("backfill of audience %s v%d failed", key, version)
            await self._progress(audience, FAILED, 0, "failed")

    async def _progress(self, audience: AudienceRecord, state: str, done: int, stage: str) -> None:
        log.info("audience %s v%d: %s (%d/%d)", audience.key, audience.version, stage, done, 3)
        await self._store.set_progress(
            audience.audience_id, state, Progress(done, BACKFILL_STEPS, stage)
        )

    async def _apply(
        self, ws: str, audience: AudienceRecord, version: int, members: set[int], now: int
    ) -> tuple[int, int]:
        done = Progress(BACKFILL_STEPS, BACKFILL_STEPS, "done")
        diff = await self._store.apply_members(
            ws, audience.audience_id, version, members, now, done
        )
        if not audience.account_level:  # accounts have no hot state: profiles do
            entered = {p: now for p in diff.entered}
            await self._hot.memberships(ws, audience.key, entered, diff.exited)
        return len(diff.entered), len(diff.exited)

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
        raw = decode_json(definition, "computed_trait.definition", violations)
        if raw is not None:
            violations += computed_violations(raw, "computed_trait.definition")
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
        raw = existing.definition
        if definition:
            raw = decode_json(definition, "computed_trait.definition", violations)
            if raw is not None:
                violations += computed_violations(raw, "computed_trait.definition")
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
        """Delete a computed trait no audience reads."""
        await self.get_computed_trait(ws, key)
        stored = await self._store.audience_definitions(ws)
        users = dependents(key, {k: a.definition for k, a in stored.items()}, computed_refs_raw)
        if users:
            raise FailedPrecondition(
                f"computed trait {key!r} is used by audiences {', '.join(users)}"
            )
        pids = await self._store.delete_computed(ws, key)
        await self._hot.computed(ws, key, {}, pids)

    async def _backfill_computed(self, ws: str, record: ComputedTraitRecord) -> None:
        try:
            async with self._lock(ws):
                current = await self._store.get_computed(ws, record.key)
                if current is None or current.version != record.version:
                    return
                await self._recompute_computed(ws, record, self._clock.now_us())
                await self._store.set_computed_state(ws, record.key, LIVE)
                log.info("computed trait %s v%d: done", record.key, record.version)
        except Exception:
            log.exception("backfill of computed trait %s failed", record.key)
            await self._store.set_computed_state(ws, record.key, FAILED)

    async def _recompute_computed(self, ws: str, record: ComputedTraitRecord, now: int) -> None:
        values = await self._store.evaluate_computed(ws, record.definition, now)
        changed, removed = await self._store.apply_computed(ws, record.key, values, now)
        await self._hot.computed(ws, record.key, changed, removed)

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
        computed = {c.key: c for c in await self._store.list_computed(ws)}
        if account_level:
            await self._store.accounts.register(ws)  # ids outlive the scratch rollback
        async with self._store.scratch(ws) as scratch:
            for k in sorted(computed_keys):
                values = await scratch.evaluate_computed(computed[k].definition, now)
                await scratch.replace_computed(k, values)
            for k in dependency_order(needed):
                members = await scratch.evaluate_audience(needed[k], now)
                await scratch.replace_members(stored[k].audience_id, members)
            return await scratch.evaluate_audience(raw, now, account_level)

    async def preview_computed_trait(
        self, ws: str, *, definition: bytes, as_of_us: int | None, sample_limit: int
    ) -> ComputedPreview:
        """Values of an unsaved computed trait per profile at `as_of_us` (default now)."""
        violations: list[FieldViolation] = []
        raw = decode_json(definition, "definition", violations)
        if raw is not None:
            violations += computed_violations(raw, "definition")
        reject(violations)
        limit = _sample_size(sample_limit, "sample_limit")
        now = self._now(as_of_us)
        values = await self._store.evaluate_computed(ws, raw, now)
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
        dependency order, at `as_of_us` (default now); write and log the differences."""
        now = self._now(as_of_us)
        entered = exited = 0
        async with self._lock(ws):
            if audience_key:
                layers = [[await self._audience(ws, audience_key, "audience_key")]]
            else:
                for record in await self._store.list_computed(ws):
                    await self._recompute_computed(ws, record, now)
                    await self._store.set_computed_state(ws, record.key, LIVE)
                stored = await self._store.audience_definitions(ws)
                order = dependency_layers({k: a.definition for k, a in stored.items()})
                layers = [[stored[k] for k in layer] for layer in order]
            done = Progress(BACKFILL_STEPS, BACKFILL_STEPS, "done")
            for batch in layers:
                # One rollup pass over the events per layer for its user-level
                # audiences, diffed and written in the database; account-level ones are
                # evaluated one by one (sql_accounts.py). The audiences a layer
                # references were written by the layers before it.
                users = [a for a in batch if not a.account_level]
                diffs = await self._store.recompute_audiences(ws, users, now, done) if users else []
                # After the commit: the hot state never shows a membership whose
                # change record is not committed.
                with phase("hot state"):
                    for audience, diff in zip(users, diffs, strict=True):
                        await self._hot.memberships(
                            ws, audience.key, dict.fromkeys(diff.entered, now), diff.exited
                        )
                        entered += len(diff.entered)
                        exited += len(diff.exited)
                for audience in batch:
                    if audience.account_level:
                        members = await self._store.evaluate_audience(
                            ws, audience.definition, now, account_level=True
                        )
                        came, left = await self._apply(ws, audience, audience.version, members, now)
                        entered += came
                        exited += left
        return RecomputeResult(entered, exited, sum(len(batch) for batch in layers))

    async def workspaces(self) -> list[str]:
        """Workspaces that have audiences or computed traits."""
        return await self._store.workspaces()

    async def reconcile(self, ws: str) -> RecomputeResult:
        """The periodic batch pass: everything recomputed at the clock's now."""
        return await self.recompute(ws, audience_key="", as_of_us=None)

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
        limit = self._page_size(page_size)
        after = _read_page_token(page_token, audience.audience_id)
        rows: list[Member] = await self._store.list_members(audience.audience_id, after, limit + 1)
        page = rows[:limit]
        refs = await self._store.refs(ws, [m.profile_id for m in page])
        token = _page_token(audience.audience_id, page[-1].profile_id) if len(rows) > limit else ""
        return MembersPage(
            members=[(ref, m.entered_at_us) for ref, m in zip(refs, page, strict=True)],
            next_page_token=token,
            total=await self._store.count_members(audience.audience_id),
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
        changes = await self._store.history(ws, audience.audience_id, pid)
        (ref,) = await self._store.refs(ws, [pid])
        member_at = False
        if at_us is not None:
            # By instant, then seq: a recompute as of an earlier instant (a backtest)
            # writes records dated then, which belong at that point of the timeline.
            before = sorted(
                (c for c in changes if c.at_us <= at_us), key=lambda c: (c.at_us, c.seq)
            )
            member_at = bool(before) and before[-1].kind == ENTERED
        return History([(_keyed(c, audience.key), ref) for c in changes], member_at)

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
            refs = {
                r.profile_id: r
                for r in await self._store.refs(ws, sorted({c.profile_id for c in changes}))
            }
            for c in changes:
                yield _keyed(c, keys.get(c.audience_id, "")), refs[c.profile_id]
            last = changes[-1].seq


def _check_realtime(realtime: bool, account_level: bool, violations: list[FieldViolation]) -> None:
    # The worker re-evaluates the profiles an event touched; an account is re-evaluated
    # only by the batch paths until group calls and user flips reach it (issue 14).
    if realtime and account_level:
        violations.append(
            FieldViolation(
                "audience.realtime",
                "account-level audiences are not evaluated in realtime yet "
                "(backfill, Recompute and the reconcile keep them up to date)",
            )
        )


def _keyed(change: Change, key: str) -> Change:
    return Change(
        change.seq,
        change.audience_id,
        key,
        change.profile_id,
        change.kind,
        change.at_us,
        change.version,
    )
