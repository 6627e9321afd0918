import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from audiences.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AudienceState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    AUDIENCE_STATE_UNSPECIFIED: _ClassVar[AudienceState]
    AUDIENCE_STATE_BACKFILLING: _ClassVar[AudienceState]
    AUDIENCE_STATE_LIVE: _ClassVar[AudienceState]
    AUDIENCE_STATE_FAILED: _ClassVar[AudienceState]

class ComputedTraitType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    COMPUTED_TRAIT_TYPE_UNSPECIFIED: _ClassVar[ComputedTraitType]
    COMPUTED_TRAIT_TYPE_EVENT_COUNT: _ClassVar[ComputedTraitType]
    COMPUTED_TRAIT_TYPE_SUM: _ClassVar[ComputedTraitType]
    COMPUTED_TRAIT_TYPE_AVG: _ClassVar[ComputedTraitType]
    COMPUTED_TRAIT_TYPE_MIN: _ClassVar[ComputedTraitType]
    COMPUTED_TRAIT_TYPE_MAX: _ClassVar[ComputedTraitType]
    COMPUTED_TRAIT_TYPE_FIRST: _ClassVar[ComputedTraitType]
    COMPUTED_TRAIT_TYPE_LAST: _ClassVar[ComputedTraitType]
    COMPUTED_TRAIT_TYPE_MOST_FREQUENT: _ClassVar[ComputedTraitType]
    COMPUTED_TRAIT_TYPE_UNIQUE_COUNT: _ClassVar[ComputedTraitType]
    COMPUTED_TRAIT_TYPE_UNIQUE_LIST: _ClassVar[ComputedTraitType]

class ChangeKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CHANGE_KIND_UNSPECIFIED: _ClassVar[ChangeKind]
    CHANGE_KIND_ENTERED: _ClassVar[ChangeKind]
    CHANGE_KIND_EXITED: _ClassVar[ChangeKind]
AUDIENCE_STATE_UNSPECIFIED: AudienceState
AUDIENCE_STATE_BACKFILLING: AudienceState
AUDIENCE_STATE_LIVE: AudienceState
AUDIENCE_STATE_FAILED: AudienceState
COMPUTED_TRAIT_TYPE_UNSPECIFIED: ComputedTraitType
COMPUTED_TRAIT_TYPE_EVENT_COUNT: ComputedTraitType
COMPUTED_TRAIT_TYPE_SUM: ComputedTraitType
COMPUTED_TRAIT_TYPE_AVG: ComputedTraitType
COMPUTED_TRAIT_TYPE_MIN: ComputedTraitType
COMPUTED_TRAIT_TYPE_MAX: ComputedTraitType
COMPUTED_TRAIT_TYPE_FIRST: ComputedTraitType
COMPUTED_TRAIT_TYPE_LAST: ComputedTraitType
COMPUTED_TRAIT_TYPE_MOST_FREQUENT: ComputedTraitType
COMPUTED_TRAIT_TYPE_UNIQUE_COUNT: ComputedTraitType
COMPUTED_TRAIT_TYPE_UNIQUE_LIST: ComputedTraitType
CHANGE_KIND_UNSPECIFIED: ChangeKind
CHANGE_KIND_ENTERED: ChangeKind
CHANGE_KIND_EXITED: ChangeKind

class Audience(_message.Message):
    __slots__ = ("key", "name", "description", "definition", "version", "state", "size", "backfill", "created_at", "updated_at", "account_level", "realtime")
    KEY_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    DEFINITION_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    BACKFILL_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    ACCOUNT_LEVEL_FIELD_NUMBER: _ClassVar[int]
    REALTIME_FIELD_NUMBER: _ClassVar[int]
    key: str
    name: str
    description: str
    definition: bytes
    version: int
    state: AudienceState
    size: int
    backfill: _common_pb2.Progress
    created_at: _timestamp_pb2.Timestamp
    updated_at: _timestamp_pb2.Timestamp
    account_level: bool
    realtime: bool
    def __init__(self, key: _Optional[str] = ..., name: _Optional[str] = ..., description: _Optional[str] = ..., definition: _Optional[bytes] = ..., version: _Optional[int] = ..., state: _Optional[_Union[AudienceState, str]] = ..., size: _Optional[int] = ..., backfill: _Optional[_Union[_common_pb2.Progress, _Mapping]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., account_level: _Optional[bool] = ..., realtime: _Optional[bool] = ...) -> None: ...

class CreateAudienceRequest(_message.Message):
    __slots__ = ("audience", "skip_backfill")
    AUDIENCE_FIELD_NUMBER: _ClassVar[int]
    SKIP_BACKFILL_FIELD_NUMBER: _ClassVar[int]
    audience: Audience
    skip_backfill: bool
    def __init__(self, audience: _Optional[_Union[Audience, _Mapping]] = ..., skip_backfill: _Optional[bool] = ...) -> None: ...

class GetAudienceRequest(_message.Message):
    __slots__ = ("key",)
    KEY_FIELD_NUMBER: _ClassVar[int]
    key: str
    def __init__(self, key: _Optional[str] = ...) -> None: ...

class ListAudiencesRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListAudiencesResponse(_message.Message):
    __slots__ = ("audiences", "next_page_token")
    AUDIENCES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    audiences: _containers.RepeatedCompositeFieldContainer[Audience]
    next_page_token: str
    def __init__(self, audiences: _Optional[_Iterable[_Union[Audience, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class UpdateAudienceRequest(_message.Message):
    __slots__ = ("audience",)
    AUDIENCE_FIELD_NUMBER: _ClassVar[int]
    audience: Audience
    def __init__(self, audience: _Optional[_Union[Audience, _Mapping]] = ...) -> None: ...

class DeleteAudienceRequest(_message.Message):
    __slots__ = ("key",)
    KEY_FIELD_NUMBER: _ClassVar[int]
    key: str
    def __init__(self, key: _Optional[str] = ...) -> None: ...

class DeleteAudienceResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ComputedTrait(_message.Message):
    __slots__ = ("key", "name", "definition", "version", "state", "created_at", "updated_at", "realtime")
    KEY_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    DEFINITION_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    REALTIME_FIELD_NUMBER: _ClassVar[int]
    key: str
    name: str
    definition: bytes
    version: int
    state: AudienceState
    created_at: _timestamp_pb2.Timestamp
    updated_at: _timestamp_pb2.Timestamp
    realtime: bool
    def __init__(self, key: _Optional[str] = ..., name: _Optional[str] = ..., definition: _Optional[bytes] = ..., version: _Optional[int] = ..., state: _Optional[_Union[AudienceState, str]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., realtime: _Optional[bool] = ...) -> None: ...

class CreateComputedTraitRequest(_message.Message):
    __slots__ = ("computed_trait", "skip_backfill")
    COMPUTED_TRAIT_FIELD_NUMBER: _ClassVar[int]
    SKIP_BACKFILL_FIELD_NUMBER: _ClassVar[int]
    computed_trait: ComputedTrait
    skip_backfill: bool
    def __init__(self, computed_trait: _Optional[_Union[ComputedTrait, _Mapping]] = ..., skip_backfill: _Optional[bool] = ...) -> None: ...

class GetComputedTraitRequest(_message.Message):
    __slots__ = ("key",)
    KEY_FIELD_NUMBER: _ClassVar[int]
    key: str
    def __init__(self, key: _Optional[str] = ...) -> None: ...

class ListComputedTraitsRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListComputedTraitsResponse(_message.Message):
    __slots__ = ("computed_traits", "next_page_token")
    COMPUTED_TRAITS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    computed_traits: _containers.RepeatedCompositeFieldContainer[ComputedTrait]
    next_page_token: str
    def __init__(self, computed_traits: _Optional[_Iterable[_Union[ComputedTrait, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class UpdateComputedTraitRequest(_message.Message):
    __slots__ = ("computed_trait",)
    COMPUTED_TRAIT_FIELD_NUMBER: _ClassVar[int]
    computed_trait: ComputedTrait
    def __init__(self, computed_trait: _Optional[_Union[ComputedTrait, _Mapping]] = ...) -> None: ...

class DeleteComputedTraitRequest(_message.Message):
    __slots__ = ("key",)
    KEY_FIELD_NUMBER: _ClassVar[int]
    key: str
    def __init__(self, key: _Optional[str] = ...) -> None: ...

class DeleteComputedTraitResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PreviewRequest(_message.Message):
    __slots__ = ("definition", "audience_key", "as_of", "sample_limit", "account_level")
    DEFINITION_FIELD_NUMBER: _ClassVar[int]
    AUDIENCE_KEY_FIELD_NUMBER: _ClassVar[int]
    AS_OF_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_LIMIT_FIELD_NUMBER: _ClassVar[int]
    ACCOUNT_LEVEL_FIELD_NUMBER: _ClassVar[int]
    definition: bytes
    audience_key: str
    as_of: _timestamp_pb2.Timestamp
    sample_limit: int
    account_level: bool
    def __init__(self, definition: _Optional[bytes] = ..., audience_key: _Optional[str] = ..., as_of: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., sample_limit: _Optional[int] = ..., account_level: _Optional[bool] = ...) -> None: ...

class PreviewResponse(_message.Message):
    __slots__ = ("size", "sample", "would_enter", "would_exit", "enter_sample", "exit_sample", "evaluated_at")
    SIZE_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_FIELD_NUMBER: _ClassVar[int]
    WOULD_ENTER_FIELD_NUMBER: _ClassVar[int]
    WOULD_EXIT_FIELD_NUMBER: _ClassVar[int]
    ENTER_SAMPLE_FIELD_NUMBER: _ClassVar[int]
    EXIT_SAMPLE_FIELD_NUMBER: _ClassVar[int]
    EVALUATED_AT_FIELD_NUMBER: _ClassVar[int]
    size: int
    sample: _containers.RepeatedCompositeFieldContainer[_common_pb2.ProfileRef]
    would_enter: int
    would_exit: int
    enter_sample: _containers.RepeatedCompositeFieldContainer[_common_pb2.ProfileRef]
    exit_sample: _containers.RepeatedCompositeFieldContainer[_common_pb2.ProfileRef]
    evaluated_at: _timestamp_pb2.Timestamp
    def __init__(self, size: _Optional[int] = ..., sample: _Optional[_Iterable[_Union[_common_pb2.ProfileRef, _Mapping]]] = ..., would_enter: _Optional[int] = ..., would_exit: _Optional[int] = ..., enter_sample: _Optional[_Iterable[_Union[_common_pb2.ProfileRef, _Mapping]]] = ..., exit_sample: _Optional[_Iterable[_Union[_common_pb2.ProfileRef, _Mapping]]] = ..., evaluated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class PreviewComputedTraitRequest(_message.Message):
    __slots__ = ("definition", "as_of", "sample_limit")
    DEFINITION_FIELD_NUMBER: _ClassVar[int]
    AS_OF_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_LIMIT_FIELD_NUMBER: _ClassVar[int]
    definition: bytes
    as_of: _timestamp_pb2.Timestamp
    sample_limit: int
    def __init__(self, definition: _Optional[bytes] = ..., as_of: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., sample_limit: _Optional[int] = ...) -> None: ...

class ComputedValue(_message.Message):
    __slots__ = ("profile", "value")
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    profile: _common_pb2.ProfileRef
    value: bytes
    def __init__(self, profile: _Optional[_Union[_common_pb2.ProfileRef, _Mapping]] = ..., value: _Optional[bytes] = ...) -> None: ...

class PreviewComputedTraitResponse(_message.Message):
    __slots__ = ("values", "profiles", "evaluated_at")
    VALUES_FIELD_NUMBER: _ClassVar[int]
    PROFILES_FIELD_NUMBER: _ClassVar[int]
    EVALUATED_AT_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedCompositeFieldContainer[ComputedValue]
    profiles: int
    evaluated_at: _timestamp_pb2.Timestamp
    def __init__(self, values: _Optional[_Iterable[_Union[ComputedValue, _Mapping]]] = ..., profiles: _Optional[int] = ..., evaluated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ListMembersRequest(_message.Message):
    __slots__ = ("audience_key", "page_size", "page_token")
    AUDIENCE_KEY_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    audience_key: str
    page_size: int
    page_token: str
    def __init__(self, audience_key: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class Member(_message.Message):
    __slots__ = ("profile", "entered_at")
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    ENTERED_AT_FIELD_NUMBER: _ClassVar[int]
    profile: _common_pb2.ProfileRef
    entered_at: _timestamp_pb2.Timestamp
    def __init__(self, profile: _Optional[_Union[_common_pb2.ProfileRef, _Mapping]] = ..., entered_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ListMembersResponse(_message.Message):
    __slots__ = ("members", "next_page_token", "total")
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    members: _containers.RepeatedCompositeFieldContainer[Member]
    next_page_token: str
    total: int
    def __init__(self, members: _Optional[_Iterable[_Union[Member, _Mapping]]] = ..., next_page_token: _Optional[str] = ..., total: _Optional[int] = ...) -> None: ...

class RecomputeRequest(_message.Message):
    __slots__ = ("audience_key", "as_of")
    AUDIENCE_KEY_FIELD_NUMBER: _ClassVar[int]
    AS_OF_FIELD_NUMBER: _ClassVar[int]
    audience_key: str
    as_of: _timestamp_pb2.Timestamp
    def __init__(self, audience_key: _Optional[str] = ..., as_of: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class RecomputeResponse(_message.Message):
    __slots__ = ("entered", "exited", "audiences")
    ENTERED_FIELD_NUMBER: _ClassVar[int]
    EXITED_FIELD_NUMBER: _ClassVar[int]
    AUDIENCES_FIELD_NUMBER: _ClassVar[int]
    entered: int
    exited: int
    audiences: int
    def __init__(self, entered: _Optional[int] = ..., exited: _Optional[int] = ..., audiences: _Optional[int] = ...) -> None: ...

class ExplainMembershipRequest(_message.Message):
    __slots__ = ("audience_key", "identifier", "as_of")
    AUDIENCE_KEY_FIELD_NUMBER: _ClassVar[int]
    IDENTIFIER_FIELD_NUMBER: _ClassVar[int]
    AS_OF_FIELD_NUMBER: _ClassVar[int]
    audience_key: str
    identifier: _common_pb2.Identifier
    as_of: _timestamp_pb2.Timestamp
    def __init__(self, audience_key: _Optional[str] = ..., identifier: _Optional[_Union[_common_pb2.Identifier, _Mapping]] = ..., as_of: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ExplainNode(_message.Message):
    __slots__ = ("path", "kind", "result", "summary", "count", "value", "event_seqs", "children")
    PATH_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    EVENT_SEQS_FIELD_NUMBER: _ClassVar[int]
    CHILDREN_FIELD_NUMBER: _ClassVar[int]
    path: str
    kind: str
    result: bool
    summary: str
    count: int
    value: bytes
    event_seqs: _containers.RepeatedScalarFieldContainer[int]
    children: _containers.RepeatedCompositeFieldContainer[ExplainNode]
    def __init__(self, path: _Optional[str] = ..., kind: _Optional[str] = ..., result: _Optional[bool] = ..., summary: _Optional[str] = ..., count: _Optional[int] = ..., value: _Optional[bytes] = ..., event_seqs: _Optional[_Iterable[int]] = ..., children: _Optional[_Iterable[_Union[ExplainNode, _Mapping]]] = ...) -> None: ...

class ExplainMembershipResponse(_message.Message):
    __slots__ = ("member", "root", "profile")
    MEMBER_FIELD_NUMBER: _ClassVar[int]
    ROOT_FIELD_NUMBER: _ClassVar[int]
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    member: bool
    root: ExplainNode
    profile: _common_pb2.ProfileRef
    def __init__(self, member: _Optional[bool] = ..., root: _Optional[_Union[ExplainNode, _Mapping]] = ..., profile: _Optional[_Union[_common_pb2.ProfileRef, _Mapping]] = ...) -> None: ...

class GetMembershipHistoryRequest(_message.Message):
    __slots__ = ("audience_key", "identifier", "at")
    AUDIENCE_KEY_FIELD_NUMBER: _ClassVar[int]
    IDENTIFIER_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    audience_key: str
    identifier: _common_pb2.Identifier
    at: _timestamp_pb2.Timestamp
    def __init__(self, audience_key: _Optional[str] = ..., identifier: _Optional[_Union[_common_pb2.Identifier, _Mapping]] = ..., at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class MembershipChange(_message.Message):
    __slots__ = ("seq", "audience_key", "profile", "kind", "at", "audience_version")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    AUDIENCE_KEY_FIELD_NUMBER: _ClassVar[int]
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    AUDIENCE_VERSION_FIELD_NUMBER: _ClassVar[int]
    seq: int
    audience_key: str
    profile: _common_pb2.ProfileRef
    kind: ChangeKind
    at: _timestamp_pb2.Timestamp
    audience_version: int
    def __init__(self, seq: _Optional[int] = ..., audience_key: _Optional[str] = ..., profile: _Optional[_Union[_common_pb2.ProfileRef, _Mapping]] = ..., kind: _Optional[_Union[ChangeKind, str]] = ..., at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., audience_version: _Optional[int] = ...) -> None: ...

class GetMembershipHistoryResponse(_message.Message):
    __slots__ = ("changes", "member_at")
    CHANGES_FIELD_NUMBER: _ClassVar[int]
    MEMBER_AT_FIELD_NUMBER: _ClassVar[int]
    changes: _containers.RepeatedCompositeFieldContainer[MembershipChange]
    member_at: bool
    def __init__(self, changes: _Optional[_Iterable[_Union[MembershipChange, _Mapping]]] = ..., member_at: _Optional[bool] = ...) -> None: ...

class WatchChangesRequest(_message.Message):
    __slots__ = ("after_seq", "audience_keys")
    AFTER_SEQ_FIELD_NUMBER: _ClassVar[int]
    AUDIENCE_KEYS_FIELD_NUMBER: _ClassVar[int]
    after_seq: int
    audience_keys: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, after_seq: _Optional[int] = ..., audience_keys: _Optional[_Iterable[str]] = ...) -> None: ...
