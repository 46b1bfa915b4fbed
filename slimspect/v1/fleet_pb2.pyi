from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Health(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    HEALTH_UNSPECIFIED: _ClassVar[Health]
    HEALTHY: _ClassVar[Health]
    DEGRADED: _ClassVar[Health]
    UNHEALTHY: _ClassVar[Health]

class UpdateStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    UPDATE_STATUS_UNSPECIFIED: _ClassVar[UpdateStatus]
    UPDATE_OK: _ClassVar[UpdateStatus]
    UPDATE_FAILED: _ClassVar[UpdateStatus]
    UPDATE_ROLLED_BACK: _ClassVar[UpdateStatus]

class CameraState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CAMERA_STATE_UNSPECIFIED: _ClassVar[CameraState]
    CAMERA_RUNNING: _ClassVar[CameraState]
    CAMERA_RETRYING: _ClassVar[CameraState]
    CAMERA_ENDED: _ClassVar[CameraState]
    CAMERA_FAILED: _ClassVar[CameraState]
HEALTH_UNSPECIFIED: Health
HEALTHY: Health
DEGRADED: Health
UNHEALTHY: Health
UPDATE_STATUS_UNSPECIFIED: UpdateStatus
UPDATE_OK: UpdateStatus
UPDATE_FAILED: UpdateStatus
UPDATE_ROLLED_BACK: UpdateStatus
CAMERA_STATE_UNSPECIFIED: CameraState
CAMERA_RUNNING: CameraState
CAMERA_RETRYING: CameraState
CAMERA_ENDED: CameraState
CAMERA_FAILED: CameraState

class UpdateResult(_message.Message):
    __slots__ = ("version", "status", "reason", "at_ms")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    AT_MS_FIELD_NUMBER: _ClassVar[int]
    version: str
    status: UpdateStatus
    reason: str
    at_ms: int
    def __init__(self, version: _Optional[str] = ..., status: _Optional[_Union[UpdateStatus, str]] = ..., reason: _Optional[str] = ..., at_ms: _Optional[int] = ...) -> None: ...

class CameraStatus(_message.Message):
    __slots__ = ("camera", "state", "fps", "error")
    CAMERA_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    FPS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    camera: str
    state: CameraState
    fps: float
    error: str
    def __init__(self, camera: _Optional[str] = ..., state: _Optional[_Union[CameraState, str]] = ..., fps: _Optional[float] = ..., error: _Optional[str] = ...) -> None: ...

class HeartbeatRequest(_message.Message):
    __slots__ = ("station", "agent_version", "model_name", "model_version", "health", "fps", "spool_depth", "spool_bytes", "events_dropped", "last_update", "cameras", "sent_at_ms")
    STATION_FIELD_NUMBER: _ClassVar[int]
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    HEALTH_FIELD_NUMBER: _ClassVar[int]
    FPS_FIELD_NUMBER: _ClassVar[int]
    SPOOL_DEPTH_FIELD_NUMBER: _ClassVar[int]
    SPOOL_BYTES_FIELD_NUMBER: _ClassVar[int]
    EVENTS_DROPPED_FIELD_NUMBER: _ClassVar[int]
    LAST_UPDATE_FIELD_NUMBER: _ClassVar[int]
    CAMERAS_FIELD_NUMBER: _ClassVar[int]
    SENT_AT_MS_FIELD_NUMBER: _ClassVar[int]
    station: str
    agent_version: str
    model_name: str
    model_version: str
    health: Health
    fps: float
    spool_depth: int
    spool_bytes: int
    events_dropped: int
    last_update: UpdateResult
    cameras: _containers.RepeatedCompositeFieldContainer[CameraStatus]
    sent_at_ms: int
    def __init__(self, station: _Optional[str] = ..., agent_version: _Optional[str] = ..., model_name: _Optional[str] = ..., model_version: _Optional[str] = ..., health: _Optional[_Union[Health, str]] = ..., fps: _Optional[float] = ..., spool_depth: _Optional[int] = ..., spool_bytes: _Optional[int] = ..., events_dropped: _Optional[int] = ..., last_update: _Optional[_Union[UpdateResult, _Mapping]] = ..., cameras: _Optional[_Iterable[_Union[CameraStatus, _Mapping]]] = ..., sent_at_ms: _Optional[int] = ...) -> None: ...

class HeartbeatReply(_message.Message):
    __slots__ = ("model_name", "model_version", "channel", "heartbeat_interval_s", "server_time_ms")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_S_FIELD_NUMBER: _ClassVar[int]
    SERVER_TIME_MS_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    model_version: str
    channel: str
    heartbeat_interval_s: int
    server_time_ms: int
    def __init__(self, model_name: _Optional[str] = ..., model_version: _Optional[str] = ..., channel: _Optional[str] = ..., heartbeat_interval_s: _Optional[int] = ..., server_time_ms: _Optional[int] = ...) -> None: ...
