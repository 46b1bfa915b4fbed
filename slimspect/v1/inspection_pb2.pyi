from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RejectReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REJECT_REASON_UNSPECIFIED: _ClassVar[RejectReason]
    MISSING_ID: _ClassVar[RejectReason]
    BOX_OUTSIDE_IMAGE: _ClassVar[RejectReason]
    UNKNOWN_CLASS: _ClassVar[RejectReason]
    SCORE_OUT_OF_RANGE: _ClassVar[RejectReason]
    CROP_TOO_LARGE: _ClassVar[RejectReason]
    CAPTURED_IN_FUTURE: _ClassVar[RejectReason]
    STATION_MISMATCH: _ClassVar[RejectReason]
    MALFORMED: _ClassVar[RejectReason]
REJECT_REASON_UNSPECIFIED: RejectReason
MISSING_ID: RejectReason
BOX_OUTSIDE_IMAGE: RejectReason
UNKNOWN_CLASS: RejectReason
SCORE_OUT_OF_RANGE: RejectReason
CROP_TOO_LARGE: RejectReason
CAPTURED_IN_FUTURE: RejectReason
STATION_MISMATCH: RejectReason
MALFORMED: RejectReason

class Box(_message.Message):
    __slots__ = ("x1", "y1", "x2", "y2")
    X1_FIELD_NUMBER: _ClassVar[int]
    Y1_FIELD_NUMBER: _ClassVar[int]
    X2_FIELD_NUMBER: _ClassVar[int]
    Y2_FIELD_NUMBER: _ClassVar[int]
    x1: float
    y1: float
    x2: float
    y2: float
    def __init__(self, x1: _Optional[float] = ..., y1: _Optional[float] = ..., x2: _Optional[float] = ..., y2: _Optional[float] = ...) -> None: ...

class Detection(_message.Message):
    __slots__ = ("box", "score", "class_id", "class_name", "crop_jpeg")
    BOX_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    CLASS_ID_FIELD_NUMBER: _ClassVar[int]
    CLASS_NAME_FIELD_NUMBER: _ClassVar[int]
    CROP_JPEG_FIELD_NUMBER: _ClassVar[int]
    box: Box
    score: float
    class_id: int
    class_name: str
    crop_jpeg: bytes
    def __init__(self, box: _Optional[_Union[Box, _Mapping]] = ..., score: _Optional[float] = ..., class_id: _Optional[int] = ..., class_name: _Optional[str] = ..., crop_jpeg: _Optional[bytes] = ...) -> None: ...

class InspectionEvent(_message.Message):
    __slots__ = ("event_id", "station", "camera", "captured_at_ms", "model_name", "model_version", "image_width", "image_height", "detections", "inference_ms", "frame_count")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    STATION_FIELD_NUMBER: _ClassVar[int]
    CAMERA_FIELD_NUMBER: _ClassVar[int]
    CAPTURED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    IMAGE_WIDTH_FIELD_NUMBER: _ClassVar[int]
    IMAGE_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    DETECTIONS_FIELD_NUMBER: _ClassVar[int]
    INFERENCE_MS_FIELD_NUMBER: _ClassVar[int]
    FRAME_COUNT_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    station: str
    camera: str
    captured_at_ms: int
    model_name: str
    model_version: str
    image_width: int
    image_height: int
    detections: _containers.RepeatedCompositeFieldContainer[Detection]
    inference_ms: float
    frame_count: int
    def __init__(self, event_id: _Optional[str] = ..., station: _Optional[str] = ..., camera: _Optional[str] = ..., captured_at_ms: _Optional[int] = ..., model_name: _Optional[str] = ..., model_version: _Optional[str] = ..., image_width: _Optional[int] = ..., image_height: _Optional[int] = ..., detections: _Optional[_Iterable[_Union[Detection, _Mapping]]] = ..., inference_ms: _Optional[float] = ..., frame_count: _Optional[int] = ...) -> None: ...

class ReportBatch(_message.Message):
    __slots__ = ("sequence", "events")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    events: _containers.RepeatedCompositeFieldContainer[InspectionEvent]
    def __init__(self, sequence: _Optional[int] = ..., events: _Optional[_Iterable[_Union[InspectionEvent, _Mapping]]] = ...) -> None: ...

class Rejection(_message.Message):
    __slots__ = ("event_id", "reason", "message")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    reason: RejectReason
    message: str
    def __init__(self, event_id: _Optional[str] = ..., reason: _Optional[_Union[RejectReason, str]] = ..., message: _Optional[str] = ...) -> None: ...

class Ack(_message.Message):
    __slots__ = ("sequence", "accepted", "duplicate", "rejected", "rejections")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    REJECTIONS_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    accepted: int
    duplicate: int
    rejected: int
    rejections: _containers.RepeatedCompositeFieldContainer[Rejection]
    def __init__(self, sequence: _Optional[int] = ..., accepted: _Optional[int] = ..., duplicate: _Optional[int] = ..., rejected: _Optional[int] = ..., rejections: _Optional[_Iterable[_Union[Rejection, _Mapping]]] = ...) -> None: ...
