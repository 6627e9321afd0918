"""SegmentationService servicer: translates between protobuf and the Segmentation
domain (service.py), nothing else."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import orjson
from audiences.v1 import common_pb2, segmentation_pb2, segmentation_pb2_grpc

from services.segmentation.explaining import ExplainedNode
from services.segmentation.model import (
    BACKFILLING,
    ENTERED,
    EXITED,
    FAILED,
    LIVE,
    AudienceRecord,
    Change,
    ComputedTraitRecord,
    ProfileRef,
)
from services.segmentation.performance import GroupCounts, Period
from services.segmentation.service import Segmentation
from services.shared.auth import current_workspace
from services.shared.request_context_pb import context_from_message
from services.shared.timestamps import timestamp_from_us, us_from_timestamp

_STATES = {
    BACKFILLING: segmentation_pb2.AUDIENCE_STATE_BACKFILLING,
    LIVE: segmentation_pb2.AUDIENCE_STATE_LIVE,
    FAILED: segmentation_pb2.AUDIENCE_STATE_FAILED,
}
_KINDS = {
    ENTERED: segmentation_pb2.CHANGE_KIND_ENTERED,
    EXITED: segmentation_pb2.CHANGE_KIND_EXITED,
}


def _definition(definition: Any) -> bytes:
    try:
        return orjson.dumps(definition)
    except TypeError:
        # orjson stops at 254 levels; a definition stored before the nesting limit may
        # be deeper, and must not make reading or listing audiences fail.
        return json.dumps(definition).encode()


def _audience(a: AudienceRecord) -> segmentation_pb2.Audience:
    return segmentation_pb2.Audience(
        key=a.key,
        name=a.name,
        description=a.description,
        definition=_definition(a.definition),
        version=a.version,
        state=_STATES.get(a.state, segmentation_pb2.AUDIENCE_STATE_UNSPECIFIED),
        size=a.size,
        backfill=common_pb2.Progress(
            done=a.progress.done, total=a.progress.total, stage=a.progress.stage
        ),
        created_at=timestamp_from_us(a.created_at_us),
        updated_at=timestamp_from_us(a.updated_at_us),
        account_level=a.account_level,
        failure_reason=a.failure_reason,
        realtime=a.realtime,
        holdout_share=a.holdout_share,
        goal=orjson.dumps(a.goal) if a.goal else b"",
    )


def _group(g: GroupCounts) -> segmentation_pb2.GroupPerformance:
    return segmentation_pb2.GroupPerformance(
        exposed=g.exposed, converted=g.converted, rate=g.rate or 0.0
    )


def _period(p: Period) -> segmentation_pb2.PerformancePeriod:
    lift = p.lift
    out = segmentation_pb2.PerformancePeriod(
        treatment=_group(p.treatment),
        holdout=_group(p.holdout),
        lift=segmentation_pb2.Lift(
            absolute_defined=lift.absolute is not None,
            absolute=lift.absolute or 0.0,
            absolute_low=lift.absolute_low or 0.0,
            absolute_high=lift.absolute_high or 0.0,
            relative_defined=lift.relative_low is not None,
            relative=lift.relative or 0.0,
            relative_low=lift.relative_low or 0.0,
            relative_high=lift.relative_high or 0.0,
        ),
    )
    if p.day_us is not None:
        out.day.CopyFrom(timestamp_from_us(p.day_us))
    return out


def _computed(c: ComputedTraitRecord) -> segmentation_pb2.ComputedTrait:
    return segmentation_pb2.ComputedTrait(
        key=c.key,
        name=c.name,
        definition=_definition(c.definition),
        version=c.version,
        state=_STATES.get(c.state, segmentation_pb2.AUDIENCE_STATE_UNSPECIFIED),
        created_at=timestamp_from_us(c.created_at_us),
        updated_at=timestamp_from_us(c.updated_at_us),
        failure_reason=c.failure_reason,
        realtime=c.realtime,
    )


def _ref(r: ProfileRef) -> common_pb2.ProfileRef:
    return common_pb2.ProfileRef(
        profile_id=str(r.profile_id),
        identifiers=[common_pb2.Identifier(type=t, value=v) for t, v in r.identifiers],
    )


def _change(c: Change, ref: ProfileRef) -> segmentation_pb2.MembershipChange:
    return segmentation_pb2.MembershipChange(
        seq=c.seq,
        audience_key=c.audience_key,
        profile=_ref(ref),
        kind=_KINDS[c.kind],
        at=timestamp_from_us(c.at_us),
        audience_version=c.version,
    )


def _node(n: ExplainedNode) -> segmentation_pb2.ExplainNode:
    return segmentation_pb2.ExplainNode(
        path=n.path,
        kind=n.kind,
        result=n.result,
        summary=n.summary,
        count=n.count,
        value=orjson.dumps(n.value) if n.has_value else b"",
        event_seqs=n.event_seqs,
        children=[_node(c) for c in n.children],
    )


def _as_of(request: Any, field: str = "as_of") -> int | None:
    return us_from_timestamp(getattr(request, field)) if request.HasField(field) else None


class SegmentationServiceServicer(segmentation_pb2_grpc.SegmentationServiceServicer):
    """The segmentation RPCs."""

    def __init__(self, segmentation: Segmentation) -> None:
        self._seg = segmentation

    async def CreateAudience(
        self, request: segmentation_pb2.CreateAudienceRequest, context: grpc.aio.ServicerContext
    ) -> segmentation_pb2.Audience:
        a = request.audience
        record = await self._seg.create_audience(
            current_workspace(),
            key=a.key,
            name=a.name,
            description=a.description,
            definition=a.definition,
            account_level=a.account_level,
            skip_backfill=request.skip_backfill,
            realtime=a.realtime,
            holdout_share=a.holdout_share,
            goal=a.goal,
        )
        return _audience(record)

    async def GetAudience(
        self, request: segmentation_pb2.GetAudienceRequest, context: grpc.aio.ServicerContext
    ) -> segmentation_pb2.Audience:
        return _audience(await self._seg.get_audience(current_workspace(), request.key))

    async def ListAudiences(
        self, request: segmentation_pb2.ListAudiencesRequest, context: grpc.aio.ServicerContext
    ) -> segmentation_pb2.ListAudiencesResponse:
        page, token = await self._seg.list_audiences(
            current_workspace(), request.page_size, request.page_token
        )
        return segmentation_pb2.ListAudiencesResponse(
            audiences=[_audience(a) for a in page], next_page_token=token
        )

    async def UpdateAudience(
        self, request: segmentation_pb2.UpdateAudienceRequest, context: grpc.aio.ServicerContext
    ) -> segmentation_pb2.Audience:
        a = request.audience
        record = await self._seg.update_audience(
            current_workspace(),
            key=a.key,
            name=a.name,
            description=a.description,
            definition=a.definition,
            realtime=a.realtime if a.HasField("realtime") else None,
            holdout_share=a.holdout_share if a.HasField("holdout_share") else None,
            goal=a.goal or None,
        )
        return _audience(record)

    async def DeleteAudience(
        self, request: segmentation_pb2.DeleteAudienceRequest, context: grpc.aio.ServicerContext
    ) -> segmentation_pb2.DeleteAudienceResponse:
        await self._seg.delete_audience(current_workspace(), request.key)
        return segmentation_pb2.DeleteAudienceResponse()

    async def CreateComputedTrait(
        self,
        request: segmentation_pb2.CreateComputedTraitRequest,
        context: grpc.aio.ServicerContext,
    ) -> segmentation_pb2.ComputedTrait:
        c = request.computed_trait
        record = await self._seg.create_computed_trait(
            current_workspace(),
            key=c.key,
            name=c.name,
            definition=c.definition,
            skip_backfill=request.skip_backfill,
            realtime=c.realtime,
        )
        return _computed(record)

    async def GetComputedTrait(
        self, request: segmentation_pb2.GetComputedTraitRequest, context: grpc.aio.ServicerContext
    ) -> segmentation_pb2.ComputedTrait:
        return _computed(await self._seg.get_computed_trait(current_workspace(), request.key))

    async def ListComputedTraits(
        self, request: segmentation_pb2.ListComputedTraitsRequest, context: grpc.aio.ServicerContext
    ) -> segmentation_pb2.ListComputedTraitsResponse:
        page, token = await self._seg.list_computed_traits(
            current_workspace(), request.page_size, request.page_token
        )
        return segmentation_pb2.ListComputedTraitsResponse(
            computed_traits=[_computed(c) for c in page], next_page_token=token
        )

    async def UpdateComputedTrait(
        self,
        request: segmentation_pb2.UpdateComputedTraitRequest,
        context: grpc.aio.ServicerContext,
    ) -> segmentation_pb2.ComputedTrait:
        c = request.computed_trait
        record = await self._seg.update_computed_trait(
            current_workspace(),
            key=c.key,
            name=c.name,
            definition=c.definition,
            realtime=c.realtime if c.HasField("realtime") else None,
        )
        return _computed(record)

    async def DeleteComputedTrait(
        self,
        request: segmentation_pb2.DeleteComputedTraitRequest,
        context: grpc.aio.ServicerContext,
    ) -> segmentation_pb2.DeleteComputedTraitResponse:
        await self._seg.delete_computed_trait(current_workspace(), request.key)
        return segmentation_pb2.DeleteComputedTraitResponse()

    async def Preview(
        self, request: segmentation_pb2.PreviewRequest, context: grpc.aio.ServicerContext
    ) -> segmentation_pb2.PreviewResponse:
        result = await self._seg.preview(
            current_workspace(),
            definition=request.definition,
            audience_key=request.audience_key,
            as_of_us=_as_of(request),
            sample_limit=request.sample_limit,
            account_level=request.account_level,
        )
        return segmentation_pb2.PreviewResponse(
            size=result.size,
            sample=[_ref(r) for r in result.sample],
            would_enter=result.would_enter,
            would_exit=result.would_exit,
            enter_sample=[_ref(r) for r in result.enter_sample],
            exit_sample=[_ref(r) for r in result.exit_sample],
            evaluated_at=timestamp_from_us(result.evaluated_at_us),
        )

    async def PreviewComputedTrait(
        self,
        request: segmentation_pb2.PreviewComputedTraitRequest,
        context: grpc.aio.ServicerContext,
    ) -> segmentation_pb2.PreviewComputedTraitResponse:
        result = await self._seg.preview_computed_trait(
            current_workspace(),
            definition=request.definition,
            as_of_us=_as_of(request),
            sample_limit=request.sample_limit,
        )
        return segmentation_pb2.PreviewComputedTraitResponse(
            values=[
                segmentation_pb2.ComputedValue(profile=_ref(ref), value=orjson.dumps(value))
                for ref, value in result.values
            ],
            profiles=result.profiles,
            evaluated_at=timestamp_from_us(result.evaluated_at_us),
        )

    async def ListMembers(
        self, request: segmentation_pb2.ListMembersRequest, context: grpc.aio.ServicerContext
    ) -> segmentation_pb2.ListMembersResponse:
        page = await self._seg.list_members(
            current_workspace(),
            audience_key=request.audience_key,
            page_size=request.page_size,
            page_token=request.page_token,
        )
        return segmentation_pb2.ListMembersResponse(
            members=[
                segmentation_pb2.Member(profile=_ref(ref), entered_at=timestamp_from_us(at))
                for ref, at in page.members
            ],
            next_page_token=page.next_page_token,
            total=page.total,
        )

    async def Recompute(
        self, request: segmentation_pb2.RecomputeRequest, context: grpc.aio.ServicerContext
    ) -> segmentation_pb2.RecomputeResponse:
        result = await self._seg.recompute(
            current_workspace(), audience_key=request.audience_key, as_of_us=_as_of(request)
        )
        return segmentation_pb2.RecomputeResponse(
            entered=result.entered,
            exited=result.exited,
            audiences=result.audiences,
            failures=[
                segmentation_pb2.RecomputeFailure(kind=f.kind, key=f.key, reason=f.reason)
                for f in result.failures
            ],
        )

    async def ExplainMembership(
        self, request: segmentation_pb2.ExplainMembershipRequest, context: grpc.aio.ServicerContext
    ) -> segmentation_pb2.ExplainMembershipResponse:
        as_of_us = _as_of(request)
        request_context = None
        if request.HasField("context"):
            # The context's local hour and weekday are dated by its `at`, else as_of,
            # else now.
            now_us = as_of_us if as_of_us is not None else time.time_ns() // 1000
            request_context = context_from_message(request.context, now_us)
        result = await self._seg.explain_membership(
            current_workspace(),
            audience_key=request.audience_key,
            id_type=request.identifier.type,
            id_value=request.identifier.value,
            as_of_us=as_of_us,
            context=request_context,
        )
        return segmentation_pb2.ExplainMembershipResponse(
            member=result.member, root=_node(result.root), profile=_ref(result.profile)
        )

    async def GetAudiencePerformance(
        self,
        request: segmentation_pb2.GetAudiencePerformanceRequest,
        context: grpc.aio.ServicerContext,
    ) -> segmentation_pb2.AudiencePerformance:
        found = await self._seg.audience_performance(
            current_workspace(),
            audience_key=request.audience_key,
            start_us=_as_of(request, "start"),
            end_us=_as_of(request, "end"),
        )
        srm = found.sample_ratio
        return segmentation_pb2.AudiencePerformance(
            audience_key=found.audience_key,
            total=_period(found.total),
            days=[_period(day) for day in found.days],
            sample_ratio=segmentation_pb2.SampleRatioCheck(
                expected_holdout_share=srm.expected_holdout_share,
                observed_holdout_share=srm.observed_holdout_share or 0.0,
                chi_square=srm.chi_square or 0.0,
                p_value=srm.p_value if srm.p_value is not None else 1.0,
                mismatch=srm.mismatch,
            ),
            start=timestamp_from_us(found.start_us),
            end=timestamp_from_us(found.end_us),
        )

    async def GetMembershipHistory(
        self,
        request: segmentation_pb2.GetMembershipHistoryRequest,
        context: grpc.aio.ServicerContext,
    ) -> segmentation_pb2.GetMembershipHistoryResponse:
        result = await self._seg.membership_history(
            current_workspace(),
            audience_key=request.audience_key,
            id_type=request.identifier.type,
            id_value=request.identifier.value,
            at_us=_as_of(request, "at"),
        )
        return segmentation_pb2.GetMembershipHistoryResponse(
            changes=[_change(c, ref) for c, ref in result.changes], member_at=result.member_at
        )

    async def WatchChanges(
        self, request: segmentation_pb2.WatchChangesRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[segmentation_pb2.MembershipChange]:
        changes = self._seg.watch(
            current_workspace(),
            after_seq=request.after_seq,
            audience_keys=list(request.audience_keys),
        )
        async for change, ref in changes:
            yield _change(change, ref)
