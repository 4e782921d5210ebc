"""Outbound events: one frozen dataclass per event, one `ErrorCode` enumeration for every front-end.

A request's life is `Queued` -> `Started` -> one end: `Finished`, `Stopped`, `Dropped` or `Error`
(requests rejected before queueing get a lone `Error` or `Dropped`). The speech core emits these
objects; each front-end renders them its own way: MQTT as JSON on `<base>/event`
(`to_dict(site)`), Hermes as `sayFinished`/`error/tts`, Wyoming as an `error` event whose `code`
is the same `ErrorCode` value.

Every event exposes `event` (its name), `id`, `ts` and `extras` (the fields beyond those, as they
appear in the JSON), so code that only routes or logs events need not know the classes.
"""

from __future__ import annotations

import enum
import json
import time
from dataclasses import KW_ONLY, dataclass, field, fields
from typing import Any, ClassVar, Protocol


class ErrorCode(str, enum.Enum):
    """Machine-readable reasons in `error` events (MQTT `code`, Hermes, Wyoming `error.code`)."""

    # The payload or event could not be turned into a request (the edge's parsers).
    PAYLOAD_TOO_LARGE = "payload_too_large"
    INVALID_UTF8 = "invalid_utf8"
    INVALID_JSON = "invalid_json"
    NOT_AN_OBJECT = "not_an_object"
    MISSING_FIELD = "missing_field"
    WRONG_TYPE = "wrong_type"
    BAD_VALUE = "bad_value"
    EMPTY_TEXT = "empty_text"
    TEXT_TOO_LONG = "text_too_long"
    # Wyoming only: an event that cannot be read, or one that does not fit the conversation so far.
    MALFORMED_EVENT = "malformed_event"
    UNEXPECTED_EVENT = "unexpected_event"
    TOO_MANY_CONNECTIONS = "too_many_connections"
    # Admission.
    RATE_LIMITED = "rate_limited"
    UNKNOWN_VOICE = "unknown_voice"
    UNSUPPORTED_LANGUAGE = "unsupported_language"
    DUPLICATE_ID = "duplicate_id"
    UNKNOWN_ID = "unknown_id"
    # The request failed while it was spoken.
    VOICE_FAILED = "voice_failed"
    LANGUAGE_UNAVAILABLE = "language_unavailable"
    OUT_OF_MEMORY = "out_of_memory"
    SYNTHESIS_FAILED = "synthesis_failed"
    AUDIO_FAILED = "audio_failed"
    INTERNAL_ERROR = "internal_error"

    def __str__(self) -> str:
        return self.value


END_EVENTS = frozenset({"finished", "stopped", "dropped", "error"})


class OutEvent(Protocol):
    """What every event offers the code that routes, publishes or logs it."""

    @property
    def event(self) -> str: ...
    @property
    def id(self) -> str | None: ...
    @property
    def ts(self) -> float: ...
    @property
    def extras(self) -> dict[str, Any]: ...
    @property
    def is_end(self) -> bool: ...
    def to_dict(self, site: str) -> dict[str, Any]: ...
    def to_json(self, site: str) -> str: ...


class _Wire:
    """The JSON rendering shared by every event class."""

    @property
    def is_end(self: OutEvent) -> bool:
        """True for the events that end a request (finished, stopped, dropped, error)."""
        return self.event in END_EVENTS

    def to_dict(self: OutEvent, site: str) -> dict[str, Any]:
        return {"event": self.event, "id": self.id, "site": site, "ts": round(self.ts, 3), **self.extras}

    def to_json(self: OutEvent, site: str) -> str:
        return json.dumps(self.to_dict(site), ensure_ascii=False, separators=(",", ":"))


@dataclass(frozen=True)
class Event(_Wire):
    """An event built from a name and a dict of fields (tests, ad-hoc publishers)."""

    event: str
    id: str | None
    extras: dict[str, Any] = field(default_factory=dict)
    ts: float = field(default_factory=time.time)  # unix time when it happened, not when sent


class _Typed(_Wire):
    """A typed event: its name is the class's NAME, its extras its own dataclass fields."""

    NAME: ClassVar[str] = ""
    OPTIONAL: ClassVar[frozenset[str]] = frozenset()  # fields left out of the JSON when None

    @property
    def event(self) -> str:
        return self.NAME

    @property
    def extras(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):  # type: ignore[arg-type]  # every subclass is a dataclass
            if f.name in ("id", "ts"):
                continue
            value = getattr(self, f.name)
            if value is None and f.name in self.OPTIONAL:
                continue
            out[f.name] = value.value if isinstance(value, enum.Enum) else value
        return out


@dataclass(frozen=True)
class Queued(_Typed):
    NAME: ClassVar[str] = "queued"
    id: str | None
    _: KW_ONLY
    position: int  # 0 = spoken next
    source: str  # the front-end it came from: mqtt, hermes, wyoming
    ts: float = field(default_factory=time.time)


@dataclass(frozen=True)
class Started(_Typed):
    NAME: ClassVar[str] = "started"
    id: str | None
    _: KW_ONLY
    first_audio_ms: float  # receipt -> first PCM frame handed to the destination
    cached: bool  # the first sentence came from the phrase cache
    ts: float = field(default_factory=time.time)


@dataclass(frozen=True)
class Finished(_Typed):
    NAME: ClassVar[str] = "finished"
    id: str | None
    _: KW_ONLY
    audio_s: float
    synth_s: float
    rtf: float | None
    first_audio_ms: float | None
    sentences: int
    cached: bool  # every sentence came from the phrase cache
    stall_s: float = 0.0  # silence heard after the first frame because audio came late (local speaker)
    ts: float = field(default_factory=time.time)


@dataclass(frozen=True)
class Stopped(_Typed):
    NAME: ClassVar[str] = "stopped"
    id: str | None
    _: KW_ONLY
    audio_s: float
    reason: str  # stop, interrupted, shutdown, disconnected
    ts: float = field(default_factory=time.time)


@dataclass(frozen=True)
class Dropped(_Typed):
    NAME: ClassVar[str] = "dropped"
    OPTIONAL: ClassVar[frozenset[str]] = frozenset({"duplicate_of"})
    id: str | None
    _: KW_ONLY
    reason: str  # queue_full, duplicate
    duplicate_of: str | None = None
    ts: float = field(default_factory=time.time)


@dataclass(frozen=True)
class Error(_Typed):
    NAME: ClassVar[str] = "error"
    OPTIONAL: ClassVar[frozenset[str]] = frozenset({"topic"})
    id: str | None
    _: KW_ONLY
    code: ErrorCode
    message: str
    topic: str | None = None  # the MQTT topic of a message that could not be parsed
    ts: float = field(default_factory=time.time)


def error_event(request_id: str | None, code: ErrorCode | str, message: str, topic: str | None = None) -> Error:
    """An `error` event (`code` given as an ErrorCode or its value)."""
    return Error(request_id, code=ErrorCode(code), message=message, topic=topic)
