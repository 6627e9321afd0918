"""ProfileService servicer: translates between protobuf and domain calls, nothing else."""

from __future__ import annotations

from collections.abc import Callable

import grpc
from audiences.v1 import common_pb2, profile_pb2, profile_pb2_grpc

from services.profile import model
from services.profile.model import HotProfile, Section
from services.profile.recommendations import definition
from services.profile.recommendations.service import RecommendationModels
from services.profile.service import ProfileService
from services.shared.auth import current_workspace
from services.shared.errors import FieldViolation, InvalidArgument
from services.shared.request_context_pb import context_inputs
from services.shared.timestamps import timestamp_from_us

_TRAINING_STATES: dict[definition.TrainingState, int] = {
    definition.TrainingState.NEVER_TRAINED: profile_pb2.TRAINING_STATE_NEVER_TRAINED,
    definition.TrainingState.RUNNING: profile_pb2.TRAINING_STATE_RUNNING,
    definition.TrainingState.SUCCEEDED: profile_pb2.TRAINING_STATE_SUCCEEDED,
    definition.TrainingState.FAILED: profile_pb2.TRAINING_STATE_FAILED,
}

# Profile's nested messages are given as dicts (see _stamp), which its typed stub does
# not describe.
_Profile: Callable[..., profile_pb2.Profile] = profile_pb2.Profile

_SECTIONS: dict[int, Section] = {
    profile_pb2.PROFILE_SECTION_TRAITS: Section.TRAITS,
    profile_pb2.PROFILE_SECTION_COMPUTED_TRAITS: Section.COMPUTED_TRAITS,
    profile_pb2.PROFILE_SECTION_AUDIENCES: Section.AUDIENCES,
    profile_pb2.PROFILE_SECTION_PREDICTIONS: Section.PREDICTIONS,
    profile_pb2.PROFILE_SECTION_RECOMMENDATIONS: Section.RECOMMENDATIONS,
    profile_pb2.PROFILE_SECTION_IDENTIFIERS: Section.IDENTIFIERS,
}


def _sections(include: list[int], field_name: str = "include") -> list[Section]:
    unknown = [
        FieldViolation(
            f"{field_name}[{index}]", "must be a PROFILE_SECTION_* other than UNSPECIFIED"
        )
        for index, value in enumerate(include)
        if value not in _SECTIONS
    ]
    if unknown:
        raise InvalidArgument(f"{field_name}: unknown profile section", unknown)
    return [_SECTIONS[value] for value in include]


def _query(include: list[int], paths: list[str]) -> model.ProfileQuery:
    return model.parse_query(_sections(include), list(paths), "trait_mask")


def _identifier(message: common_pb2.Identifier, field_name: str = "identifier") -> model.Identifier:
    return model.parse_identifier(message.type, message.value, field_name)


def _identifier_pb(identifier: model.Identifier) -> common_pb2.Identifier:
    return common_pb2.Identifier(type=identifier.type, value=identifier.value)


def _recommendation_pb(item: model.Recommendation) -> profile_pb2.Recommendation:
    return profile_pb2.Recommendation(
        item_id=item.item_id,
        score=item.score,
        metadata=(item.metadata or "").encode(),
        model_key=item.model_key,
        popular=item.popular,
    )


def _recommendation_model(
    message: profile_pb2.RecommendationModel,
) -> definition.RecommendationModel:
    return definition.RecommendationModel(
        key=message.key,
        item_events=tuple(
            definition.ItemEvent(e.event_name, e.weight) for e in message.item_events
        ),
        item_property=message.item_property,
        size=message.size,
        recommend_consumed=message.recommend_consumed,
        exclusions=tuple(
            definition.ItemExclusion(x.property, tuple(x.values)) for x in message.exclusions
        ),
        goal_event=message.goal_event,
    )


def _recommendation_model_pb(
    found: definition.RecommendationModel,
) -> profile_pb2.RecommendationModel:
    training = found.training
    status = profile_pb2.TrainingStatus(
        state=_TRAINING_STATES[training.state],  # type: ignore[arg-type]
        progress=training.progress,
        profiles=training.profiles,
        items=training.items,
        interactions=training.interactions,
        error=training.error or "",
    )
    if training.started_at_us is not None:
        status.started_at.CopyFrom(timestamp_from_us(training.started_at_us))
    if training.finished_at_us is not None:
        status.finished_at.CopyFrom(timestamp_from_us(training.finished_at_us))
    return profile_pb2.RecommendationModel(
        key=found.key,
        item_events=[
            profile_pb2.ItemEvent(event_name=e.event_name, weight=e.weight)
            for e in found.item_events
        ],
        item_property=found.item_property,
        size=found.size,
        recommend_consumed=found.recommend_consumed,
        exclusions=[
            profile_pb2.ItemExclusion(property=x.property, values=list(x.values))
            for x in found.exclusions
        ],
        created_at=timestamp_from_us(found.created_at_us),
        training=status,
        goal_event=found.goal_event,
    )


def _stamp(value_us: int) -> dict[str, int]:
    # Nested messages given as dicts are built by upb in C: about twice as fast as
    # constructing Timestamp objects in Python (measured; this is the hot path).
    seconds, micros = divmod(value_us, 1_000_000)
    return {"seconds": seconds, "nanos": micros * 1000}


def profile_message(profile: HotProfile) -> profile_pb2.Profile:
    """The Profile message of a domain profile (BatchGetProfiles; GetProfile's bytes match it)."""
    message = _Profile(
        profile_id=profile.profile_id,
        identifiers=[{"type": i.type, "value": i.value} for i in profile.identifiers],
        audiences=[
            {"key": key, "entered_at": _stamp(int(at_us)), "holdout": key in profile.holdouts}
            for key, at_us in profile.audiences.items()
        ],
        predictions=[
            {
                "key": score.key,
                "probability": score.probability,
                "percentile": score.percentile,
                "top_features": score.top_features,
                **({} if score.scored_at_us is None else {"scored_at": _stamp(score.scored_at_us)}),
            }
            for score in profile.predictions
        ],
        recommendations=[_recommendation_pb(r) for r in profile.recommendations or ()],
    )
    if profile.traits is not None:
        message.traits = profile.traits
    if profile.computed_traits is not None:
        message.computed_traits = profile.computed_traits
    if profile.last_seen_us is not None:
        message.last_seen.CopyFrom(timestamp_from_us(profile.last_seen_us))
    return message


def _text(json_text: str | None) -> bytes:
    return b"" if json_text is None else json_text.encode()


def _event_pb(event: model.TimelineEvent) -> profile_pb2.TimelineEvent:
    return profile_pb2.TimelineEvent(
        seq=event.seq,
        message_id=event.message_id,
        type=event.type,
        name=event.name or "",
        timestamp=timestamp_from_us(event.timestamp_us),
        properties=_text(event.properties),
        traits=_text(event.traits),
        context=_text(event.context),
    )


class ProfileServiceServicer(profile_pb2_grpc.ProfileServiceServicer):
    """The profile RPCs."""

    def __init__(self, profiles: ProfileService, models: RecommendationModels) -> None:
        self._profiles = profiles
        self._models = models

    # Returns bytes where the generated base says Profile: see the docstring.
    async def GetProfile(  # type: ignore[override]
        self, request: profile_pb2.GetProfileRequest, context: grpc.aio.ServicerContext
    ) -> bytes:
        """The Profile message already serialized: registered without a response
        serializer (app.PREENCODED), because the hot state hands it over ready."""
        identifier = _identifier(request.identifier)
        if request.include or request.HasField("trait_mask"):
            query = _query(list(request.include), list(request.trait_mask.paths))
        else:
            # The common request (every section, no mask): nothing to parse or check.
            query = model.EVERYTHING
        if request.HasField("context") or request.log_exposure:
            request_context = None
            if request.HasField("context"):
                fields, custom, at_us = context_inputs(request.context)
                request_context = self._profiles.request_context(fields, custom, at_us, "context")
            return await self._profiles.get_profile_in_context(
                current_workspace(), identifier, query, request_context, request.log_exposure
            )
        return await self._profiles.get_profile_encoded(current_workspace(), identifier, query)

    async def BatchGetProfiles(
        self, request: profile_pb2.BatchGetProfilesRequest, context: grpc.aio.ServicerContext
    ) -> profile_pb2.BatchGetProfilesResponse:
        identifiers = model.parse_identifiers(
            [(i.type, i.value) for i in request.identifiers], "identifiers"
        )
        query = _query(list(request.include), list(request.trait_mask.paths))
        found = await self._profiles.batch_get_profiles(current_workspace(), identifiers, query)
        return profile_pb2.BatchGetProfilesResponse(
            profiles=[
                profile_pb2.ProfileLookup(identifier=asked, found=False)
                if profile is None
                else profile_pb2.ProfileLookup(
                    identifier=asked, found=True, profile=profile_message(profile)
                )
                for asked, profile in zip(request.identifiers, found, strict=True)
            ]
        )

    async def ListEvents(
        self, request: profile_pb2.ListEventsRequest, context: grpc.aio.ServicerContext
    ) -> profile_pb2.ListEventsResponse:
        identifier = _identifier(request.identifier)
        page = await self._profiles.list_events(
            current_workspace(),
            identifier,
            model.page_size(request.page_size),
            request.page_token,
            model.event_names(list(request.event_names)),
        )
        return profile_pb2.ListEventsResponse(
            events=[_event_pb(e) for e in page.events], next_page_token=page.next_page_token
        )

    async def GetRecommendations(
        self, request: profile_pb2.GetRecommendationsRequest, context: grpc.aio.ServicerContext
    ) -> profile_pb2.GetRecommendationsResponse:
        identifier = _identifier(request.identifier)
        found = await self._profiles.get_recommendations(
            current_workspace(),
            identifier,
            model.recommendation_limit(request.limit),
            request.include_consumed,
            request.model_key,
        )
        return profile_pb2.GetRecommendationsResponse(
            recommendations=[_recommendation_pb(r) for r in found.items],
            profile=common_pb2.ProfileRef(
                profile_id=found.profile.profile_id,
                identifiers=[_identifier_pb(i) for i in found.profile.identifiers],
            ),
            cold_start=found.cold_start,
        )

    async def CreateRecommendationModel(
        self,
        request: profile_pb2.CreateRecommendationModelRequest,
        context: grpc.aio.ServicerContext,
    ) -> profile_pb2.RecommendationModel:
        created = await self._models.create(
            current_workspace(), _recommendation_model(request.model)
        )
        return _recommendation_model_pb(created)

    async def GetRecommendationModel(
        self, request: profile_pb2.GetRecommendationModelRequest, context: grpc.aio.ServicerContext
    ) -> profile_pb2.RecommendationModel:
        return _recommendation_model_pb(await self._models.get(current_workspace(), request.key))

    async def ListRecommendationModels(
        self,
        request: profile_pb2.ListRecommendationModelsRequest,
        context: grpc.aio.ServicerContext,
    ) -> profile_pb2.ListRecommendationModelsResponse:
        found = await self._models.list(current_workspace())
        return profile_pb2.ListRecommendationModelsResponse(
            models=[_recommendation_model_pb(m) for m in found]
        )

    async def DeleteRecommendationModel(
        self,
        request: profile_pb2.DeleteRecommendationModelRequest,
        context: grpc.aio.ServicerContext,
    ) -> profile_pb2.DeleteRecommendationModelResponse:
        await self._models.delete(current_workspace(), request.key)
        return profile_pb2.DeleteRecommendationModelResponse()

    async def TrainRecommendationModel(
        self,
        request: profile_pb2.TrainRecommendationModelRequest,
        context: grpc.aio.ServicerContext,
    ) -> profile_pb2.RecommendationModel:
        return _recommendation_model_pb(await self._models.train(current_workspace(), request.key))

    async def DeleteProfile(
        self, request: profile_pb2.DeleteProfileRequest, context: grpc.aio.ServicerContext
    ) -> profile_pb2.DeleteProfileResponse:
        identifier = _identifier(request.identifier)
        deleted = await self._profiles.delete_profile(current_workspace(), identifier)
        return profile_pb2.DeleteProfileResponse(
            events_deleted=deleted.events_deleted,
            identities_deleted=deleted.identities_deleted,
            audiences_exited=deleted.audiences_exited,
        )
