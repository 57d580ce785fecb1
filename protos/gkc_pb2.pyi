from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class WireFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    WIRE_FORMAT_FLOAT32: _ClassVar[WireFormat]
    WIRE_FORMAT_FLOAT16: _ClassVar[WireFormat]
WIRE_FORMAT_FLOAT32: WireFormat
WIRE_FORMAT_FLOAT16: WireFormat

class BatchGetRequest(_message.Message):
    __slots__ = ("user_id", "item_ids", "category_ids", "version", "format")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_IDS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    item_ids: _containers.RepeatedScalarFieldContainer[str]
    category_ids: _containers.RepeatedScalarFieldContainer[str]
    version: int
    format: WireFormat
    def __init__(self, user_id: _Optional[str] = ..., item_ids: _Optional[_Iterable[str]] = ..., category_ids: _Optional[_Iterable[str]] = ..., version: _Optional[int] = ..., format: _Optional[_Union[WireFormat, str]] = ...) -> None: ...

class Block(_message.Message):
    __slots__ = ("data", "rows", "dim", "found", "index")
    DATA_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    FOUND_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    rows: int
    dim: int
    found: bytes
    index: bytes
    def __init__(self, data: _Optional[bytes] = ..., rows: _Optional[int] = ..., dim: _Optional[int] = ..., found: _Optional[bytes] = ..., index: _Optional[bytes] = ...) -> None: ...

class BatchGetResponse(_message.Message):
    __slots__ = ("version", "format", "user", "user_dim", "user_found", "items", "user_categories", "publish_id", "checksum")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    USER_DIM_FIELD_NUMBER: _ClassVar[int]
    USER_FOUND_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    USER_CATEGORIES_FIELD_NUMBER: _ClassVar[int]
    PUBLISH_ID_FIELD_NUMBER: _ClassVar[int]
    CHECKSUM_FIELD_NUMBER: _ClassVar[int]
    version: int
    format: WireFormat
    user: bytes
    user_dim: int
    user_found: bool
    items: Block
    user_categories: Block
    publish_id: str
    checksum: str
    def __init__(self, version: _Optional[int] = ..., format: _Optional[_Union[WireFormat, str]] = ..., user: _Optional[bytes] = ..., user_dim: _Optional[int] = ..., user_found: _Optional[bool] = ..., items: _Optional[_Union[Block, _Mapping]] = ..., user_categories: _Optional[_Union[Block, _Mapping]] = ..., publish_id: _Optional[str] = ..., checksum: _Optional[str] = ...) -> None: ...
