import datetime

from google.protobuf import field_mask_pb2 as _field_mask_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from audiences.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ProfileSection(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PROFILE_SECTION_UNSPECIFIED: _ClassVar[ProfileSection]
    PROFILE_SECTION_TRAITS: _ClassVar[ProfileSection]
    PROFILE_SECTION_COMPUTED_TRAITS: _ClassVar[ProfileSection]
    PROFILE_SECTION_AUDIENCES: _ClassVar[ProfileSection]
    PROFILE_SECTION_PREDICTIONS: _ClassVar[ProfileSection]
    PROFILE_SECTION_RECOMMENDATIONS: _ClassVar[ProfileSection]
    PROFILE_SECTION_IDENTIFIERS: _ClassVar[ProfileSection]
PROFILE_SECTION_UNSPECIFIED: ProfileSection
PROFILE_SECTION_TRAITS: ProfileSection
PROFILE_SECTION_COMPUTED_TRAITS: ProfileSection
PROFILE_SECTION_AUDIENCES: ProfileSection
PROFILE_SECTION_PREDICTIONS: ProfileSection
PROFILE_SECTION_RECOMMENDATIONS: ProfileSection
PROFILE_SECTION_IDENTIFIERS: ProfileSection

class GetProfileRequest(_message.Message):
    __slots__ = ("identifier", "include", "trait_mask")
    IDENTIFIER_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_FIELD_NUMBER: _ClassVar[int]
    TRAIT_MASK_FIELD_NUMBER: _ClassVar[int]
    identifier: _common_pb2.Identifier
    include: _containers.RepeatedScalarFieldContainer[ProfileSection]
    trait_mask: _field_mask_pb2.FieldMask
    def __init__(self, identifier: _Optional[_Union[_common_pb2.Identifier, _Mapping]] = ..., include: _Optional[_Iterable[_Union[ProfileSection, str]]] = ..., trait_mask: _Optional[_Union[_field_mask_pb2.FieldMask, _Mapping]] = ...) -> None: ...

class AudienceMembership(_message.Message):
    __slots__ = ("key", "entered_at")
    KEY_FIELD_NUMBER: _ClassVar[int]
    ENTERED_AT_FIELD_NUMBER: _ClassVar[int]
    key: str
    entered_at: _timestamp_pb2.Timestamp
    def __init__(self, key: _Optional[str] = ..., entered_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class PredictionScore(_message.Message):
    __slots__ = ("key", "probability", "percentile", "scored_at", "top_features")
    KEY_FIELD_NUMBER: _ClassVar[int]
    PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    PERCENTILE_FIELD_NUMBER: _ClassVar[int]
    SCORED_AT_FIELD_NUMBER: _ClassVar[int]
    TOP_FEATURES_FIELD_NUMBER: _ClassVar[int]
    key: str
    probability: float
    percentile: float
    scored_at: _timestamp_pb2.Timestamp
    top_features: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, key: _Optional[str] = ..., probability: _Optional[float] = ..., percentile: _Optional[float] = ..., scored_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., top_features: _Optional[_Iterable[str]] = ...) -> None: ...

class Recommendation(_message.Message):
    __slots__ = ("item_id", "score")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    score: float
    def __init__(self, item_id: _Optional[str] = ..., score: _Optional[float] = ...) -> None: ...

class Profile(_message.Message):
    __slots__ = ("profile_id", "identifiers", "traits", "computed_traits", "audiences", "predictions", "recommendations", "last_seen")
    PROFILE_ID_FIELD_NUMBER: _ClassVar[int]
    IDENTIFIERS_FIELD_NUMBER: _ClassVar[int]
    TRAITS_FIELD_NUMBER: _ClassVar[int]
    COMPUTED_TRAITS_FIELD_NUMBER: _ClassVar[int]
    AUDIENCES_FIELD_NUMBER: _ClassVar[int]
    PREDICTIONS_FIELD_NUMBER: _ClassVar[int]
    RECOMMENDATIONS_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_FIELD_NUMBER: _ClassVar[int]
    profile_id: str
    identifiers: _containers.RepeatedCompositeFieldContainer[_common_pb2.Identifier]
    traits: bytes
    computed_traits: bytes
    audiences: _containers.RepeatedCompositeFieldContainer[AudienceMembership]
    predictions: _containers.RepeatedCompositeFieldContainer[PredictionScore]
    recommendations: _containers.RepeatedCompositeFieldContainer[Recommendation]
    last_seen: _timestamp_pb2.Timestamp
    def __init__(self, profile_id: _Optional[str] = ..., identifiers: _Optional[_Iterable[_Union[_common_pb2.Identifier, _Mapping]]] = ..., traits: _Optional[bytes] = ..., computed_traits: _Optional[bytes] = ..., audiences: _Optional[_Iterable[_Union[AudienceMembership, _Mapping]]] = ..., predictions: _Optional[_Iterable[_Union[PredictionScore, _Mapping]]] = ..., recommendations: _Optional[_Iterable[_Union[Recommendation, _Mapping]]] = ..., last_seen: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class BatchGetProfilesRequest(_message.Message):
    __slots__ = ("identifiers", "include", "trait_mask")
    IDENTIFIERS_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_FIELD_NUMBER: _ClassVar[int]
    TRAIT_MASK_FIELD_NUMBER: _ClassVar[int]
    identifiers: _containers.RepeatedCompositeFieldContainer[_common_pb2.Identifier]
    include: _containers.RepeatedScalarFieldContainer[ProfileSection]
    trait_mask: _field_mask_pb2.FieldMask
    def __init__(self, identifiers: _Optional[_Iterable[_Union[_common_pb2.Identifier, _Mapping]]] = ..., include: _Optional[_Iterable[_Union[ProfileSection, str]]] = ..., trait_mask: _Optional[_Union[_field_mask_pb2.FieldMask, _Mapping]] = ...) -> None: ...

class ProfileLookup(_message.Message):
    __slots__ = ("identifier", "found", "profile")
    IDENTIFIER_FIELD_NUMBER: _ClassVar[int]
    FOUND_FIELD_NUMBER: _ClassVar[int]
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    identifier: _common_pb2.Identifier
    found: bool
    profile: Profile
    def __init__(self, identifier: _Optional[_Union[_common_pb2.Identifier, _Mapping]] = ..., found: _Optional[bool] = ..., profile: _Optional[_Union[Profile, _Mapping]] = ...) -> None: ...

class BatchGetProfilesResponse(_message.Message):
    __slots__ = ("profiles",)
    PROFILES_FIELD_NUMBER: _ClassVar[int]
    profiles: _containers.RepeatedCompositeFieldContainer[ProfileLookup]
    def __init__(self, profiles: _Optional[_Iterable[_Union[ProfileLookup, _Mapping]]] = ...) -> None: ...

class ListEventsRequest(_message.Message):
    __slots__ = ("identifier", "page_size", "page_token", "event_names")
    IDENTIFIER_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    EVENT_NAMES_FIELD_NUMBER: _ClassVar[int]
    identifier: _common_pb2.Identifier
    page_size: int
    page_token: str
    event_names: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, identifier: _Optional[_Union[_common_pb2.Identifier, _Mapping]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., event_names: _Optional[_Iterable[str]] = ...) -> None: ...

class TimelineEvent(_message.Message):
    __slots__ = ("seq", "message_id", "type", "name", "timestamp", "properties", "traits", "context")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    PROPERTIES_FIELD_NUMBER: _ClassVar[int]
    TRAITS_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    seq: int
    message_id: str
    type: str
    name: str
    timestamp: _timestamp_pb2.Timestamp
    properties: bytes
    traits: bytes
    context: bytes
    def __init__(self, seq: _Optional[int] = ..., message_id: _Optional[str] = ..., type: _Optional[str] = ..., name: _Optional[str] = ..., timestamp: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., properties: _Optional[bytes] = ..., traits: _Optional[bytes] = ..., context: _Optional[bytes] = ...) -> None: ...

class ListEventsResponse(_message.Message):
    __slots__ = ("events", "next_page_token")
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[TimelineEvent]
    next_page_token: str
    def __init__(self, events: _Optional[_Iterable[_Union[TimelineEvent, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetRecommendationsRequest(_message.Message):
    __slots__ = ("identifier", "model_key", "limit", "include_consumed")
    IDENTIFIER_FIELD_NUMBER: _ClassVar[int]
    MODEL_KEY_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_CONSUMED_FIELD_NUMBER: _ClassVar[int]
    identifier: _common_pb2.Identifier
    model_key: str
    limit: int
    include_consumed: bool
    def __init__(self, identifier: _Optional[_Union[_common_pb2.Identifier, _Mapping]] = ..., model_key: _Optional[str] = ..., limit: _Optional[int] = ..., include_consumed: _Optional[bool] = ...) -> None: ...

class GetRecommendationsResponse(_message.Message):
    __slots__ = ("recommendations", "profile", "cold_start")
    RECOMMENDATIONS_FIELD_NUMBER: _ClassVar[int]
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    COLD_START_FIELD_NUMBER: _ClassVar[int]
    recommendations: _containers.RepeatedCompositeFieldContainer[Recommendation]
    profile: _common_pb2.ProfileRef
    cold_start: bool
    def __init__(self, recommendations: _Optional[_Iterable[_Union[Recommendation, _Mapping]]] = ..., profile: _Optional[_Union[_common_pb2.ProfileRef, _Mapping]] = ..., cold_start: _Optional[bool] = ...) -> None: ...

class DeleteProfileRequest(_message.Message):
    __slots__ = ("identifier",)
    IDENTIFIER_FIELD_NUMBER: _ClassVar[int]
    identifier: _common_pb2.Identifier
    def __init__(self, identifier: _Optional[_Union[_common_pb2.Identifier, _Mapping]] = ...) -> None: ...

class DeleteProfileResponse(_message.Message):
    __slots__ = ("events_deleted", "identities_deleted", "audiences_exited")
    EVENTS_DELETED_FIELD_NUMBER: _ClassVar[int]
    IDENTITIES_DELETED_FIELD_NUMBER: _ClassVar[int]
    AUDIENCES_EXITED_FIELD_NUMBER: _ClassVar[int]
    events_deleted: int
    identities_deleted: int
    audiences_exited: int
    def __init__(self, events_deleted: _Optional[int] = ..., identities_deleted: _Optional[int] = ..., audiences_exited: _Optional[int] = ...) -> None: ...
