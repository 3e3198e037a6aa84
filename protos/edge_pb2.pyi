from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DTYPE_UNSPECIFIED: _ClassVar[DType]
    FLOAT32: _ClassVar[DType]
    FLOAT64: _ClassVar[DType]
DTYPE_UNSPECIFIED: DType
FLOAT32: DType
FLOAT64: DType

class Window(_message.Message):
    __slots__ = ("shape", "dtype", "data")
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    shape: _containers.RepeatedScalarFieldContainer[int]
    dtype: DType
    data: bytes
    def __init__(self, shape: _Optional[_Iterable[int]] = ..., dtype: _Optional[_Union[DType, str]] = ..., data: _Optional[bytes] = ...) -> None: ...

class IngestRequest(_message.Message):
    __slots__ = ("source", "window", "captured_at", "label")
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    CAPTURED_AT_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    source: str
    window: Window
    captured_at: float
    label: int
    def __init__(self, source: _Optional[str] = ..., window: _Optional[_Union[Window, _Mapping]] = ..., captured_at: _Optional[float] = ..., label: _Optional[int] = ...) -> None: ...

class IngestReply(_message.Message):
    __slots__ = ("accepted", "first_id", "last_id", "evicted")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    FIRST_ID_FIELD_NUMBER: _ClassVar[int]
    LAST_ID_FIELD_NUMBER: _ClassVar[int]
    EVICTED_FIELD_NUMBER: _ClassVar[int]
    accepted: int
    first_id: int
    last_id: int
    evicted: int
    def __init__(self, accepted: _Optional[int] = ..., first_id: _Optional[int] = ..., last_id: _Optional[int] = ..., evicted: _Optional[int] = ...) -> None: ...

class PredictRequest(_message.Message):
    __slots__ = ("window", "request_id")
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    window: Window
    request_id: str
    def __init__(self, window: _Optional[_Union[Window, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...

class PredictReply(_message.Message):
    __slots__ = ("request_id", "logits", "label", "class_name", "model_generation")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    LOGITS_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    CLASS_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_GENERATION_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    logits: _containers.RepeatedScalarFieldContainer[float]
    label: int
    class_name: str
    model_generation: int
    def __init__(self, request_id: _Optional[str] = ..., logits: _Optional[_Iterable[float]] = ..., label: _Optional[int] = ..., class_name: _Optional[str] = ..., model_generation: _Optional[int] = ...) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ReloadModelRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("generation", "sha256", "version", "format", "dataset", "scenario", "method", "round", "channels", "length", "class_names", "loaded_at", "path", "installed_version")
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    SCENARIO_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    CLASS_NAMES_FIELD_NUMBER: _ClassVar[int]
    LOADED_AT_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    INSTALLED_VERSION_FIELD_NUMBER: _ClassVar[int]
    generation: int
    sha256: str
    version: str
    format: str
    dataset: str
    scenario: str
    method: str
    round: int
    channels: int
    length: int
    class_names: _containers.RepeatedScalarFieldContainer[str]
    loaded_at: float
    path: str
    installed_version: int
    def __init__(self, generation: _Optional[int] = ..., sha256: _Optional[str] = ..., version: _Optional[str] = ..., format: _Optional[str] = ..., dataset: _Optional[str] = ..., scenario: _Optional[str] = ..., method: _Optional[str] = ..., round: _Optional[int] = ..., channels: _Optional[int] = ..., length: _Optional[int] = ..., class_names: _Optional[_Iterable[str]] = ..., loaded_at: _Optional[float] = ..., path: _Optional[str] = ..., installed_version: _Optional[int] = ...) -> None: ...

class SourceCount(_message.Message):
    __slots__ = ("source", "windows")
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    WINDOWS_FIELD_NUMBER: _ClassVar[int]
    source: str
    windows: int
    def __init__(self, source: _Optional[str] = ..., windows: _Optional[int] = ...) -> None: ...

class StatusReply(_message.Message):
    __slots__ = ("model", "sources", "windows", "store_bytes", "last_round", "predictions", "evicted")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SOURCES_FIELD_NUMBER: _ClassVar[int]
    WINDOWS_FIELD_NUMBER: _ClassVar[int]
    STORE_BYTES_FIELD_NUMBER: _ClassVar[int]
    LAST_ROUND_FIELD_NUMBER: _ClassVar[int]
    PREDICTIONS_FIELD_NUMBER: _ClassVar[int]
    EVICTED_FIELD_NUMBER: _ClassVar[int]
    model: ModelInfo
    sources: _containers.RepeatedCompositeFieldContainer[SourceCount]
    windows: int
    store_bytes: int
    last_round: int
    predictions: int
    evicted: int
    def __init__(self, model: _Optional[_Union[ModelInfo, _Mapping]] = ..., sources: _Optional[_Iterable[_Union[SourceCount, _Mapping]]] = ..., windows: _Optional[int] = ..., store_bytes: _Optional[int] = ..., last_round: _Optional[int] = ..., predictions: _Optional[int] = ..., evicted: _Optional[int] = ...) -> None: ...
