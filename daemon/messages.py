"""Requests, and the typed messages at the MQTT edge: payload bytes in, frozen dataclasses out.

The core (`daemon.speech`) never sees raw payloads. Every way a payload can be wrong maps to a
`BadRequest` whose `code` is one of these `ErrorCode`s:

    payload_too_large  invalid_utf8  invalid_json  not_an_object  missing_field
    wrong_type         bad_value     empty_text    text_too_long

`clean_text`, `check_volume` and `check_language` are the same checks for front-ends that build
their requests themselves (Hermes, Wyoming).

Unknown JSON keys are ignored so that senders can add their own fields (Home Assistant templates,
Node-RED message properties) without breaking.
"""

from __future__ import annotations

import json
import math
import unicodedata
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, cast

from daemon.config import SpeechConfig
from daemon.errors import BadRequest
from daemon.events import ErrorCode

if TYPE_CHECKING:
    from daemon.utterance import Destination

Priority = Literal["low", "normal", "high"]
PRIORITIES: tuple[Priority, ...] = ("high", "normal", "low")  # the order the queue serves them in

# Request ids travel in every event; keep them short and printable.
MAX_ID_CHARS = 128
# Language codes are ISO 639-1 ("en", "de"), possibly with a region ("pt-BR"); anything longer is junk.
MAX_LANGUAGE_CHARS = 16


@dataclass(frozen=True)
class SayRequest:
    """One utterance to speak, validated and normalised."""

    text: str
    id: str
    voice: str | None = None  # None = the engine's default voice
    volume: float = 1.0  # 0..1, multiplied with the master volume
    priority: Priority = "normal"
    interrupt: bool = False  # cut the current utterance and speak this one next
    received_at: float = 0.0  # time.monotonic() when the message arrived (first_audio_ms starts here)
    source: str = "mqtt"
    client: str | None = None  # who sent it, as the request says (JSON "client"): the rate-limit key
    language: str | None = None  # ISO code; None = the engine's default (tts.language)
    # Where the audio goes: None = the local player; a Wyoming connection gives its own.
    destination: Destination | None = field(default=None, compare=False, repr=False)
    # A later sentence of a stream whose first part was admitted: not rate limited or deduplicated again.
    continuation: bool = False


def new_request_id() -> str:
    """A fresh, short, unique request id."""
    return uuid.uuid4().hex[:12]


def parse_say(payload: bytes, received_at: float, limits: SpeechConfig, source: str = "mqtt") -> SayRequest:
    """Turn a `say` payload (plain UTF-8 text or a JSON object) into a SayRequest; raises BadRequest."""
    raw = _decode(payload, limits)
    if not raw.strip().startswith("{"):
        return SayRequest(
            text=clean_text(raw, limits), id=new_request_id(), received_at=received_at, source=source
        )
    obj = _load_object(raw)
    if "text" not in obj:
        raise BadRequest(ErrorCode.MISSING_FIELD, "'text' is required")
    text = clean_text(_field(obj, "text", str), limits)
    request_id = _parse_id(obj)
    voice = _field(obj, "voice", str, optional=True)
    if voice is not None and not voice.strip():
        voice = None  # "" means "the default voice", as an absent key does
    language = check_language(_field(obj, "language", str, optional=True))
    volume = check_volume(_field(obj, "volume", float, optional=True))
    priority = _field(obj, "priority", str, optional=True)
    if priority is None:
        priority = "normal"
    elif priority not in PRIORITIES:
        raise BadRequest(ErrorCode.BAD_VALUE, f"'priority' must be one of low, normal, high, got {priority!r}")
    interrupt = _field(obj, "interrupt", bool, optional=True)
    client = _field(obj, "client", str, optional=True)
    if client is not None and not (0 < len(client) <= MAX_ID_CHARS and client.isprintable()):
        raise BadRequest(ErrorCode.BAD_VALUE, f"'client' must be 1..{MAX_ID_CHARS} printable characters")
    return SayRequest(
        text=text,
        id=request_id or new_request_id(),
        voice=voice,
        language=language,
        volume=1.0 if volume is None else volume,
        priority=cast(Priority, priority),
        interrupt=bool(interrupt),
        received_at=received_at,
        source=source,
        client=client,
    )


def parse_stop(payload: bytes, limits: SpeechConfig) -> str | None:
    """A `stop` payload: empty (or `{}`) means stop everything (None); `{"id": ...}` names one request."""
    raw = _decode(payload, limits)
    if not raw.strip():
        return None
    if not raw.strip().startswith("{"):
        raise BadRequest(ErrorCode.INVALID_JSON, 'stop payload must be empty or a JSON object {"id": "..."}')
    return _parse_id(_load_object(raw))


def parse_volume(payload: bytes, limits: SpeechConfig) -> float:
    """A `volume/set` payload: one number in 0..1 (plain text or JSON)."""
    raw = _decode(payload, limits).strip()
    try:
        value = float(raw)
    except ValueError:
        raise BadRequest(ErrorCode.BAD_VALUE, f"volume must be a number in 0..1, got {raw[:40]!r}") from None
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise BadRequest(ErrorCode.BAD_VALUE, f"volume must be a number in 0..1, got {value!r}")
    return value


def request_id_of(payload: bytes) -> str | None:
    """Best-effort id of a payload that failed to parse, so its error event can name the request."""
    try:
        obj = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    if isinstance(obj, dict):
        value = obj.get("id")
        if isinstance(value, str) and 0 < len(value) <= MAX_ID_CHARS and value.isprintable():
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
    return None


# --- helpers -------------------------------------------------------------------------------------


def _decode(payload: bytes, limits: SpeechConfig) -> str:
    if len(payload) > limits.max_payload_bytes:
        raise BadRequest(
            ErrorCode.PAYLOAD_TOO_LARGE,
            f"payload is {len(payload)} bytes; the limit is {limits.max_payload_bytes} "
            "(speech.max_payload_bytes)",
        )
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequest(
            ErrorCode.INVALID_UTF8, f"payload is not valid UTF-8 (bad byte at offset {exc.start})"
        ) from None
    return text.removeprefix("\ufeff")  # a BOM from Windows tools is not text


def _load_object(raw: str) -> dict[str, Any]:
    try:
        obj = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise BadRequest(
            ErrorCode.INVALID_JSON, f"invalid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    except RecursionError:
        raise BadRequest(ErrorCode.INVALID_JSON, "invalid JSON: nested too deeply") from None
    if not isinstance(obj, dict):
        raise BadRequest(ErrorCode.NOT_AN_OBJECT, f"JSON payload must be an object, got {type(obj).__name__}")
    return obj


_TYPE_NAMES = {str: "a string", float: "a number", bool: "true or false"}


def _field(obj: dict[str, Any], name: str, kind: type[Any], optional: bool = False) -> Any:
    """obj[name] checked against kind; null/absent is allowed only when optional."""
    value: Any = obj.get(name)
    if value is None and optional:
        return None
    ok = (
        isinstance(value, (int, float)) and not isinstance(value, bool)
        if kind is float
        else isinstance(value, kind)
    )
    if not ok:
        got = "null" if value is None else type(value).__name__
        raise BadRequest(ErrorCode.WRONG_TYPE, f"'{name}' must be {_TYPE_NAMES[kind]}, got {got}")
    return float(value) if kind is float else value


def _parse_id(obj: dict[str, Any]) -> str | None:
    value = obj.get("id")
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)  # Node-RED msgids and counters are often numbers
    if not isinstance(value, str):
        raise BadRequest(ErrorCode.WRONG_TYPE, f"'id' must be a string, got {type(value).__name__}")
    if not value or len(value) > MAX_ID_CHARS or not value.isprintable():
        raise BadRequest(ErrorCode.BAD_VALUE, f"'id' must be 1..{MAX_ID_CHARS} printable characters")
    return value


_UNSPEAKABLE = frozenset({"Cc", "Cf", "Cs"})  # Unicode categories: control, format, surrogate


def check_volume(volume: float | None) -> float | None:
    """A request's volume: None (not given) or a finite number in 0..1; raises BadRequest."""
    if volume is not None and not (math.isfinite(volume) and 0.0 <= volume <= 1.0):
        raise BadRequest(ErrorCode.BAD_VALUE, f"'volume' must be a number in 0..1, got {volume!r}")
    return volume


def check_language(language: str | None) -> str | None:
    """A language code as given (stripped); "" or None means the default. Whether the engine speaks
    it is admission's question, not the parser's."""
    if language is None or not language.strip():
        return None
    language = language.strip()
    if len(language) > MAX_LANGUAGE_CHARS or not all(ch.isascii() and (ch.isalnum() or ch in "-_") for ch in language):
        raise BadRequest(
            ErrorCode.BAD_VALUE, f"'language' must be a language code such as 'en' or 'de', got {language[:40]!r}"
        )
    return language


def clean_text(text: str, limits: SpeechConfig) -> str:
    """Newlines and tabs become spaces; control characters (NUL included), invisible format
    characters (zero-width spaces, bidi overrides, joiners) and lone surrogates go; runs collapse."""
    kept = "".join(
        " " if ch.isspace() else ch
        for ch in text
        if ch.isspace() or unicodedata.category(ch) not in _UNSPEAKABLE
    )
    cleaned = " ".join(kept.split())
    if not cleaned:
        raise BadRequest(ErrorCode.EMPTY_TEXT, "text is empty")
    if len(cleaned) > limits.max_text_chars:
        raise BadRequest(
            ErrorCode.TEXT_TOO_LONG,
            f"text has {len(cleaned)} characters; the limit is {limits.max_text_chars} "
            "(speech.max_text_chars)",
        )
    return cleaned
