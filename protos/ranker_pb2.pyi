from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RankRequest(_message.Message):
    __slots__ = ("user_id", "item_ids", "category_ids", "shop_ids", "model")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_IDS_FIELD_NUMBER: _ClassVar[int]
    SHOP_IDS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    item_ids: _containers.RepeatedScalarFieldContainer[str]
    category_ids: _containers.RepeatedScalarFieldContainer[str]
    shop_ids: _containers.RepeatedScalarFieldContainer[str]
    model: str
    def __init__(self, user_id: _Optional[str] = ..., item_ids: _Optional[_Iterable[str]] = ..., category_ids: _Optional[_Iterable[str]] = ..., shop_ids: _Optional[_Iterable[str]] = ..., model: _Optional[str] = ...) -> None: ...

class RankResponse(_message.Message):
    __slots__ = ("scores", "model", "model_revision", "knowledge_version", "degraded", "degraded_reason", "unknown_items", "history_len")
    SCORES_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_REVISION_FIELD_NUMBER: _ClassVar[int]
    KNOWLEDGE_VERSION_FIELD_NUMBER: _ClassVar[int]
    DEGRADED_FIELD_NUMBER: _ClassVar[int]
    DEGRADED_REASON_FIELD_NUMBER: _ClassVar[int]
    UNKNOWN_ITEMS_FIELD_NUMBER: _ClassVar[int]
    HISTORY_LEN_FIELD_NUMBER: _ClassVar[int]
    scores: _containers.RepeatedScalarFieldContainer[float]
    model: str
    model_revision: str
    knowledge_version: int
    degraded: bool
    degraded_reason: str
    unknown_items: int
    history_len: int
    def __init__(self, scores: _Optional[_Iterable[float]] = ..., model: _Optional[str] = ..., model_revision: _Optional[str] = ..., knowledge_version: _Optional[int] = ..., degraded: _Optional[bool] = ..., degraded_reason: _Optional[str] = ..., unknown_items: _Optional[int] = ..., history_len: _Optional[int] = ...) -> None: ...

class ClickEvent(_message.Message):
    __slots__ = ("event_id", "user_id", "item_id", "category_id", "ts")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_ID_FIELD_NUMBER: _ClassVar[int]
    TS_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    user_id: str
    item_id: str
    category_id: str
    ts: float
    def __init__(self, event_id: _Optional[str] = ..., user_id: _Optional[str] = ..., item_id: _Optional[str] = ..., category_id: _Optional[str] = ..., ts: _Optional[float] = ...) -> None: ...

class RecordEventsRequest(_message.Message):
    __slots__ = ("events",)
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[ClickEvent]
    def __init__(self, events: _Optional[_Iterable[_Union[ClickEvent, _Mapping]]] = ...) -> None: ...

class RecordEventsResponse(_message.Message):
    __slots__ = ("received", "recorded")
    RECEIVED_FIELD_NUMBER: _ClassVar[int]
    RECORDED_FIELD_NUMBER: _ClassVar[int]
    received: int
    recorded: int
    def __init__(self, received: _Optional[int] = ..., recorded: _Optional[int] = ...) -> None: ...
