from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class FunctionToApply(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FUNCTION_TO_APPLY_UNSPECIFIED: _ClassVar[FunctionToApply]
    FUNCTION_TO_APPLY_SOFTMAX: _ClassVar[FunctionToApply]
    FUNCTION_TO_APPLY_SIGMOID: _ClassVar[FunctionToApply]
    FUNCTION_TO_APPLY_NONE: _ClassVar[FunctionToApply]

class PixelFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PIXEL_FORMAT_UNSPECIFIED: _ClassVar[PixelFormat]
    PIXEL_FORMAT_RGB8: _ClassVar[PixelFormat]
    PIXEL_FORMAT_RGBA8: _ClassVar[PixelFormat]
    PIXEL_FORMAT_BGR8: _ClassVar[PixelFormat]
    PIXEL_FORMAT_GRAY8: _ClassVar[PixelFormat]

class DataType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DATA_TYPE_UNSPECIFIED: _ClassVar[DataType]
    DATA_TYPE_FLOAT32: _ClassVar[DataType]
    DATA_TYPE_FLOAT16: _ClassVar[DataType]
FUNCTION_TO_APPLY_UNSPECIFIED: FunctionToApply
FUNCTION_TO_APPLY_SOFTMAX: FunctionToApply
FUNCTION_TO_APPLY_SIGMOID: FunctionToApply
FUNCTION_TO_APPLY_NONE: FunctionToApply
PIXEL_FORMAT_UNSPECIFIED: PixelFormat
PIXEL_FORMAT_RGB8: PixelFormat
PIXEL_FORMAT_RGBA8: PixelFormat
PIXEL_FORMAT_BGR8: PixelFormat
PIXEL_FORMAT_GRAY8: PixelFormat
DATA_TYPE_UNSPECIFIED: DataType
DATA_TYPE_FLOAT32: DataType
DATA_TYPE_FLOAT16: DataType

class Parameters(_message.Message):
    __slots__ = ("top_k", "threshold", "function_to_apply")
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    FUNCTION_TO_APPLY_FIELD_NUMBER: _ClassVar[int]
    top_k: int
    threshold: float
    function_to_apply: FunctionToApply
    def __init__(self, top_k: _Optional[int] = ..., threshold: _Optional[float] = ..., function_to_apply: _Optional[_Union[FunctionToApply, str]] = ...) -> None: ...

class RawImage(_message.Message):
    __slots__ = ("width", "height", "format", "data")
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    width: int
    height: int
    format: PixelFormat
    data: bytes
    def __init__(self, width: _Optional[int] = ..., height: _Optional[int] = ..., format: _Optional[_Union[PixelFormat, str]] = ..., data: _Optional[bytes] = ...) -> None: ...

class Tensor(_message.Message):
    __slots__ = ("dims", "dtype", "raw_data", "float_data")
    DIMS_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    RAW_DATA_FIELD_NUMBER: _ClassVar[int]
    FLOAT_DATA_FIELD_NUMBER: _ClassVar[int]
    dims: _containers.RepeatedScalarFieldContainer[int]
    dtype: DataType
    raw_data: bytes
    float_data: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, dims: _Optional[_Iterable[int]] = ..., dtype: _Optional[_Union[DataType, str]] = ..., raw_data: _Optional[bytes] = ..., float_data: _Optional[_Iterable[float]] = ...) -> None: ...

class Input(_message.Message):
    __slots__ = ("image", "image_base64", "raw", "tensor")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    IMAGE_BASE64_FIELD_NUMBER: _ClassVar[int]
    RAW_FIELD_NUMBER: _ClassVar[int]
    TENSOR_FIELD_NUMBER: _ClassVar[int]
    image: bytes
    image_base64: str
    raw: RawImage
    tensor: Tensor
    def __init__(self, image: _Optional[bytes] = ..., image_base64: _Optional[str] = ..., raw: _Optional[_Union[RawImage, _Mapping]] = ..., tensor: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class ClassifyRequest(_message.Message):
    __slots__ = ("model", "inputs", "parameters", "request_id", "preprocessor_overrides")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    PREPROCESSOR_OVERRIDES_FIELD_NUMBER: _ClassVar[int]
    model: str
    inputs: _containers.RepeatedCompositeFieldContainer[Input]
    parameters: Parameters
    request_id: str
    preprocessor_overrides: _struct_pb2.Struct
    def __init__(self, model: _Optional[str] = ..., inputs: _Optional[_Iterable[_Union[Input, _Mapping]]] = ..., parameters: _Optional[_Union[Parameters, _Mapping]] = ..., request_id: _Optional[str] = ..., preprocessor_overrides: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class Label(_message.Message):
    __slots__ = ("label", "score", "index")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    label: str
    score: float
    index: int
    def __init__(self, label: _Optional[str] = ..., score: _Optional[float] = ..., index: _Optional[int] = ...) -> None: ...

class Result(_message.Message):
    __slots__ = ("labels",)
    LABELS_FIELD_NUMBER: _ClassVar[int]
    labels: _containers.RepeatedCompositeFieldContainer[Label]
    def __init__(self, labels: _Optional[_Iterable[_Union[Label, _Mapping]]] = ...) -> None: ...

class ClassifyResponse(_message.Message):
    __slots__ = ("request_id", "model", "results")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    model: str
    results: _containers.RepeatedCompositeFieldContainer[Result]
    def __init__(self, request_id: _Optional[str] = ..., model: _Optional[str] = ..., results: _Optional[_Iterable[_Union[Result, _Mapping]]] = ...) -> None: ...

class ClassifyStreamRequest(_message.Message):
    __slots__ = ("model", "inputs", "parameters", "request_id", "preprocessor_overrides", "drop_stale")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    PREPROCESSOR_OVERRIDES_FIELD_NUMBER: _ClassVar[int]
    DROP_STALE_FIELD_NUMBER: _ClassVar[int]
    model: str
    inputs: _containers.RepeatedCompositeFieldContainer[Input]
    parameters: Parameters
    request_id: str
    preprocessor_overrides: _struct_pb2.Struct
    drop_stale: bool
    def __init__(self, model: _Optional[str] = ..., inputs: _Optional[_Iterable[_Union[Input, _Mapping]]] = ..., parameters: _Optional[_Union[Parameters, _Mapping]] = ..., request_id: _Optional[str] = ..., preprocessor_overrides: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., drop_stale: _Optional[bool] = ...) -> None: ...

class Status(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class ClassifyStreamResponse(_message.Message):
    __slots__ = ("request_id", "model", "results", "status", "skipped")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    SKIPPED_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    model: str
    results: _containers.RepeatedCompositeFieldContainer[Result]
    status: Status
    skipped: bool
    def __init__(self, request_id: _Optional[str] = ..., model: _Optional[str] = ..., results: _Optional[_Iterable[_Union[Result, _Mapping]]] = ..., status: _Optional[_Union[Status, _Mapping]] = ..., skipped: _Optional[bool] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ...) -> None: ...

class GetModelRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class GetModelResponse(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: ModelInfo
    def __init__(self, model: _Optional[_Union[ModelInfo, _Mapping]] = ...) -> None: ...

class ModelStats(_message.Message):
    __slots__ = ("requests", "inputs", "batches", "batch_size_counts", "queue_time_us", "compute_time_us", "failed_requests", "dropped_inputs")
    class BatchSizeCountsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: int
        value: int
        def __init__(self, key: _Optional[int] = ..., value: _Optional[int] = ...) -> None: ...
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    BATCHES_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_COUNTS_FIELD_NUMBER: _ClassVar[int]
    QUEUE_TIME_US_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_TIME_US_FIELD_NUMBER: _ClassVar[int]
    FAILED_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    DROPPED_INPUTS_FIELD_NUMBER: _ClassVar[int]
    requests: int
    inputs: int
    batches: int
    batch_size_counts: _containers.ScalarMap[int, int]
    queue_time_us: int
    compute_time_us: int
    failed_requests: int
    dropped_inputs: int
    def __init__(self, requests: _Optional[int] = ..., inputs: _Optional[int] = ..., batches: _Optional[int] = ..., batch_size_counts: _Optional[_Mapping[int, int]] = ..., queue_time_us: _Optional[int] = ..., compute_time_us: _Optional[int] = ..., failed_requests: _Optional[int] = ..., dropped_inputs: _Optional[int] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("name", "source", "variant", "input_name", "input_shape", "input_dtype", "num_labels", "labels", "preprocessing", "default_function_to_apply", "is_default", "input_layout", "max_batch_size", "stats", "ready")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    INPUT_NAME_FIELD_NUMBER: _ClassVar[int]
    INPUT_SHAPE_FIELD_NUMBER: _ClassVar[int]
    INPUT_DTYPE_FIELD_NUMBER: _ClassVar[int]
    NUM_LABELS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    PREPROCESSING_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_FUNCTION_TO_APPLY_FIELD_NUMBER: _ClassVar[int]
    IS_DEFAULT_FIELD_NUMBER: _ClassVar[int]
    INPUT_LAYOUT_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    STATS_FIELD_NUMBER: _ClassVar[int]
    READY_FIELD_NUMBER: _ClassVar[int]
    name: str
    source: str
    variant: str
    input_name: str
    input_shape: _containers.RepeatedScalarFieldContainer[int]
    input_dtype: DataType
    num_labels: int
    labels: _containers.RepeatedScalarFieldContainer[str]
    preprocessing: _struct_pb2.Struct
    default_function_to_apply: FunctionToApply
    is_default: bool
    input_layout: str
    max_batch_size: int
    stats: ModelStats
    ready: bool
    def __init__(self, name: _Optional[str] = ..., source: _Optional[str] = ..., variant: _Optional[str] = ..., input_name: _Optional[str] = ..., input_shape: _Optional[_Iterable[int]] = ..., input_dtype: _Optional[_Union[DataType, str]] = ..., num_labels: _Optional[int] = ..., labels: _Optional[_Iterable[str]] = ..., preprocessing: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., default_function_to_apply: _Optional[_Union[FunctionToApply, str]] = ..., is_default: _Optional[bool] = ..., input_layout: _Optional[str] = ..., max_batch_size: _Optional[int] = ..., stats: _Optional[_Union[ModelStats, _Mapping]] = ..., ready: _Optional[bool] = ...) -> None: ...
