import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DestinationKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DESTINATION_KIND_UNSPECIFIED: _ClassVar[DestinationKind]
    DESTINATION_KIND_WEBHOOK: _ClassVar[DestinationKind]
    DESTINATION_KIND_FILE: _ClassVar[DestinationKind]
    DESTINATION_KIND_BRAZE: _ClassVar[DestinationKind]
    DESTINATION_KIND_AMPLITUDE: _ClassVar[DestinationKind]

class SyncSource(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SYNC_SOURCE_UNSPECIFIED: _ClassVar[SyncSource]
    SYNC_SOURCE_AUDIENCE: _ClassVar[SyncSource]
    SYNC_SOURCE_COMPUTED_TRAIT: _ClassVar[SyncSource]
    SYNC_SOURCE_PREDICTION: _ClassVar[SyncSource]
    SYNC_SOURCE_RECOMMENDATION: _ClassVar[SyncSource]

class SyncCadence(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SYNC_CADENCE_UNSPECIFIED: _ClassVar[SyncCadence]
    SYNC_CADENCE_ONE_TIME: _ClassVar[SyncCadence]
    SYNC_CADENCE_HOURLY: _ClassVar[SyncCadence]
    SYNC_CADENCE_DAILY: _ClassVar[SyncCadence]
    SYNC_CADENCE_REALTIME: _ClassVar[SyncCadence]

class ExportFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EXPORT_FORMAT_UNSPECIFIED: _ClassVar[ExportFormat]
    EXPORT_FORMAT_UNFORMATTED: _ClassVar[ExportFormat]
    EXPORT_FORMAT_FORMATTED: _ClassVar[ExportFormat]
    EXPORT_FORMAT_SINGLE_COLUMN: _ClassVar[ExportFormat]
DESTINATION_KIND_UNSPECIFIED: DestinationKind
DESTINATION_KIND_WEBHOOK: DestinationKind
DESTINATION_KIND_FILE: DestinationKind
DESTINATION_KIND_BRAZE: DestinationKind
DESTINATION_KIND_AMPLITUDE: DestinationKind
SYNC_SOURCE_UNSPECIFIED: SyncSource
SYNC_SOURCE_AUDIENCE: SyncSource
SYNC_SOURCE_COMPUTED_TRAIT: SyncSource
SYNC_SOURCE_PREDICTION: SyncSource
SYNC_SOURCE_RECOMMENDATION: SyncSource
SYNC_CADENCE_UNSPECIFIED: SyncCadence
SYNC_CADENCE_ONE_TIME: SyncCadence
SYNC_CADENCE_HOURLY: SyncCadence
SYNC_CADENCE_DAILY: SyncCadence
SYNC_CADENCE_REALTIME: SyncCadence
EXPORT_FORMAT_UNSPECIFIED: ExportFormat
EXPORT_FORMAT_UNFORMATTED: ExportFormat
EXPORT_FORMAT_FORMATTED: ExportFormat
EXPORT_FORMAT_SINGLE_COLUMN: ExportFormat

class Destination(_message.Message):
    __slots__ = ("id", "name", "kind", "base_url", "directory", "file_format", "secret", "rate_limit_per_second", "has_secret", "created_at", "batch_size", "timeout_seconds", "options")
    class OptionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    BASE_URL_FIELD_NUMBER: _ClassVar[int]
    DIRECTORY_FIELD_NUMBER: _ClassVar[int]
    FILE_FORMAT_FIELD_NUMBER: _ClassVar[int]
    SECRET_FIELD_NUMBER: _ClassVar[int]
    RATE_LIMIT_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    HAS_SECRET_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    kind: DestinationKind
    base_url: str
    directory: str
    file_format: str
    secret: str
    rate_limit_per_second: float
    has_secret: bool
    created_at: _timestamp_pb2.Timestamp
    batch_size: int
    timeout_seconds: float
    options: _containers.ScalarMap[str, str]
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., kind: _Optional[_Union[DestinationKind, str]] = ..., base_url: _Optional[str] = ..., directory: _Optional[str] = ..., file_format: _Optional[str] = ..., secret: _Optional[str] = ..., rate_limit_per_second: _Optional[float] = ..., has_secret: _Optional[bool] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., batch_size: _Optional[int] = ..., timeout_seconds: _Optional[float] = ..., options: _Optional[_Mapping[str, str]] = ...) -> None: ...

class CreateDestinationRequest(_message.Message):
    __slots__ = ("destination",)
    DESTINATION_FIELD_NUMBER: _ClassVar[int]
    destination: Destination
    def __init__(self, destination: _Optional[_Union[Destination, _Mapping]] = ...) -> None: ...

class GetDestinationRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class ListDestinationsRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListDestinationsResponse(_message.Message):
    __slots__ = ("destinations", "next_page_token")
    DESTINATIONS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    destinations: _containers.RepeatedCompositeFieldContainer[Destination]
    next_page_token: str
    def __init__(self, destinations: _Optional[_Iterable[_Union[Destination, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class UpdateDestinationRequest(_message.Message):
    __slots__ = ("destination",)
    DESTINATION_FIELD_NUMBER: _ClassVar[int]
    destination: Destination
    def __init__(self, destination: _Optional[_Union[Destination, _Mapping]] = ...) -> None: ...

class DeleteDestinationRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class DeleteDestinationResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Sync(_message.Message):
    __slots__ = ("id", "destination_id", "source", "source_key", "cadence", "cursor", "paused", "paused_reason", "max_removal_fraction", "created_at", "id_type", "next_run_at")
    ID_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_ID_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_KEY_FIELD_NUMBER: _ClassVar[int]
    CADENCE_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    PAUSED_FIELD_NUMBER: _ClassVar[int]
    PAUSED_REASON_FIELD_NUMBER: _ClassVar[int]
    MAX_REMOVAL_FRACTION_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    ID_TYPE_FIELD_NUMBER: _ClassVar[int]
    NEXT_RUN_AT_FIELD_NUMBER: _ClassVar[int]
    id: str
    destination_id: str
    source: SyncSource
    source_key: str
    cadence: SyncCadence
    cursor: int
    paused: bool
    paused_reason: str
    max_removal_fraction: float
    created_at: _timestamp_pb2.Timestamp
    id_type: str
    next_run_at: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[str] = ..., destination_id: _Optional[str] = ..., source: _Optional[_Union[SyncSource, str]] = ..., source_key: _Optional[str] = ..., cadence: _Optional[_Union[SyncCadence, str]] = ..., cursor: _Optional[int] = ..., paused: _Optional[bool] = ..., paused_reason: _Optional[str] = ..., max_removal_fraction: _Optional[float] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., id_type: _Optional[str] = ..., next_run_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class CreateSyncRequest(_message.Message):
    __slots__ = ("sync",)
    SYNC_FIELD_NUMBER: _ClassVar[int]
    sync: Sync
    def __init__(self, sync: _Optional[_Union[Sync, _Mapping]] = ...) -> None: ...

class GetSyncRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class ListSyncsRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListSyncsResponse(_message.Message):
    __slots__ = ("syncs", "next_page_token")
    SYNCS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    syncs: _containers.RepeatedCompositeFieldContainer[Sync]
    next_page_token: str
    def __init__(self, syncs: _Optional[_Iterable[_Union[Sync, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class UpdateSyncRequest(_message.Message):
    __slots__ = ("sync",)
    SYNC_FIELD_NUMBER: _ClassVar[int]
    sync: Sync
    def __init__(self, sync: _Optional[_Union[Sync, _Mapping]] = ...) -> None: ...

class DeleteSyncRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class DeleteSyncResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RunSyncRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class SyncRun(_message.Message):
    __slots__ = ("id", "sync_id", "status", "added", "removed", "batches", "retries", "from_cursor", "to_cursor", "error", "started_at", "finished_at", "skipped", "failed", "duration_ms", "dead_letters")
    ID_FIELD_NUMBER: _ClassVar[int]
    SYNC_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    ADDED_FIELD_NUMBER: _ClassVar[int]
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    BATCHES_FIELD_NUMBER: _ClassVar[int]
    RETRIES_FIELD_NUMBER: _ClassVar[int]
    FROM_CURSOR_FIELD_NUMBER: _ClassVar[int]
    TO_CURSOR_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    SKIPPED_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    DURATION_MS_FIELD_NUMBER: _ClassVar[int]
    DEAD_LETTERS_FIELD_NUMBER: _ClassVar[int]
    id: str
    sync_id: str
    status: str
    added: int
    removed: int
    batches: int
    retries: int
    from_cursor: int
    to_cursor: int
    error: str
    started_at: _timestamp_pb2.Timestamp
    finished_at: _timestamp_pb2.Timestamp
    skipped: int
    failed: int
    duration_ms: int
    dead_letters: _containers.RepeatedCompositeFieldContainer[DeadLetter]
    def __init__(self, id: _Optional[str] = ..., sync_id: _Optional[str] = ..., status: _Optional[str] = ..., added: _Optional[int] = ..., removed: _Optional[int] = ..., batches: _Optional[int] = ..., retries: _Optional[int] = ..., from_cursor: _Optional[int] = ..., to_cursor: _Optional[int] = ..., error: _Optional[str] = ..., started_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., finished_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., skipped: _Optional[int] = ..., failed: _Optional[int] = ..., duration_ms: _Optional[int] = ..., dead_letters: _Optional[_Iterable[_Union[DeadLetter, _Mapping]]] = ...) -> None: ...

class DeadLetter(_message.Message):
    __slots__ = ("id", "idempotency_key", "first_seq", "last_seq", "status_code", "response_body", "changes", "created_at", "redriven_at")
    ID_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    FIRST_SEQ_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQ_FIELD_NUMBER: _ClassVar[int]
    STATUS_CODE_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_BODY_FIELD_NUMBER: _ClassVar[int]
    CHANGES_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    REDRIVEN_AT_FIELD_NUMBER: _ClassVar[int]
    id: str
    idempotency_key: str
    first_seq: int
    last_seq: int
    status_code: int
    response_body: str
    changes: int
    created_at: _timestamp_pb2.Timestamp
    redriven_at: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[str] = ..., idempotency_key: _Optional[str] = ..., first_seq: _Optional[int] = ..., last_seq: _Optional[int] = ..., status_code: _Optional[int] = ..., response_body: _Optional[str] = ..., changes: _Optional[int] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., redriven_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class RedriveDeadLettersRequest(_message.Message):
    __slots__ = ("sync_id", "dead_letter_ids")
    SYNC_ID_FIELD_NUMBER: _ClassVar[int]
    DEAD_LETTER_IDS_FIELD_NUMBER: _ClassVar[int]
    sync_id: str
    dead_letter_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, sync_id: _Optional[str] = ..., dead_letter_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class ListSyncRunsRequest(_message.Message):
    __slots__ = ("sync_id", "page_size", "page_token")
    SYNC_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    sync_id: str
    page_size: int
    page_token: str
    def __init__(self, sync_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListSyncRunsResponse(_message.Message):
    __slots__ = ("runs", "next_page_token")
    RUNS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    runs: _containers.RepeatedCompositeFieldContainer[SyncRun]
    next_page_token: str
    def __init__(self, runs: _Optional[_Iterable[_Union[SyncRun, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class ExportAudienceRequest(_message.Message):
    __slots__ = ("audience_key", "format", "id_type", "raw")
    AUDIENCE_KEY_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    ID_TYPE_FIELD_NUMBER: _ClassVar[int]
    RAW_FIELD_NUMBER: _ClassVar[int]
    audience_key: str
    format: ExportFormat
    id_type: str
    raw: bool
    def __init__(self, audience_key: _Optional[str] = ..., format: _Optional[_Union[ExportFormat, str]] = ..., id_type: _Optional[str] = ..., raw: _Optional[bool] = ...) -> None: ...

class ExportChunk(_message.Message):
    __slots__ = ("csv", "rows", "members_done", "members_total")
    CSV_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    MEMBERS_DONE_FIELD_NUMBER: _ClassVar[int]
    MEMBERS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    csv: bytes
    rows: int
    members_done: int
    members_total: int
    def __init__(self, csv: _Optional[bytes] = ..., rows: _Optional[int] = ..., members_done: _Optional[int] = ..., members_total: _Optional[int] = ...) -> None: ...
