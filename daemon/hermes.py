"""Rhasspy / Snips Hermes text to speech: `hermes/tts/say` in, `hermes/tts/sayFinished` out.

A say message for this daemon's site (`siteId`, or `site_id` as rhasspy-hermes' own CLI writes
it; absent means "default") becomes an ordinary request (`text`, `id`, `volume`, and `lang` as the
request's language, checked against the loaded model's languages). When the request ends, however
it ends, the daemon publishes `hermes/tts/sayFinished` `{"id", "siteId", "sessionId"}` (the say's
id and session, echoed). When it ended in an error, `hermes/error/tts` `{"error", "context",
"siteId", "sessionId"}` goes out first, as Rhasspy's own TTS service does.

Replies are spelled as the say was: a say with snake_case keys (`site_id` / `session_id`, as
rhasspy-hermes' CLI sends `dataclasses.asdict()` of its TtsSay) is answered with snake_case keys
only, because that CLI builds `TtsSayFinished(**payload)` from the reply and a camelCase key makes
the constructor raise (and the CLI wait forever); any other say gets the spec's camelCase.
Say messages for other sites are ignored; a payload that is not a JSON object (its site unknown)
is answered as this site's. Events for every request still go to `<base>/event`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from daemon.admission import EmitFn
from daemon.config import SpeechConfig
from daemon.errors import BadRequest
from daemon.events import ErrorCode, OutEvent, error_event
from daemon.messages import SayRequest, check_language, check_volume, clean_text, new_request_id
from daemon.mqtt import MessageHandler, MqttLink

_LOGGER = logging.getLogger(__name__)

SAY = "hermes/tts/say"
SAY_FINISHED = "hermes/tts/sayFinished"
ERROR = "hermes/error/tts"


@dataclass(frozen=True)
class HermesSay:
    """Who asked: echoed in the replies."""

    hermes_id: str | None
    site_id: str
    session_id: str | None
    snake_case: bool


class HermesBridge:
    """Turns `hermes/tts/say` into requests and their end events into Hermes replies."""

    def __init__(
        self,
        link: MqttLink,
        site_id: str,
        submit: Callable[[SayRequest], bool],
        limits: SpeechConfig,
        emit: EmitFn,
    ) -> None:
        self.site_id = site_id
        self._publish = link.publish
        self._submit = submit
        self._limits = limits
        self._emit = emit
        self._pending: dict[str, HermesSay] = {}  # request id -> the say it came from

    def routes(self) -> Mapping[str, MessageHandler]:
        return {SAY: self.handle}

    @property
    def pending(self) -> int:
        return len(self._pending)

    def handle(self, topic: str, payload: bytes, received_at: float) -> None:
        if topic != SAY:
            return
        try:
            obj = json.loads(payload.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            obj = None
        if not isinstance(obj, dict):
            say = HermesSay(None, self.site_id, None, False)
            self._fail(new_request_id(), say, ErrorCode.INVALID_JSON, "hermes/tts/say payload must be a JSON object")
            return
        site = obj.get("siteId", obj.get("site_id", "default"))
        if site != self.site_id:
            _LOGGER.debug("hermes/tts/say for site %r, not ours (%r): ignored", site, self.site_id)
            return
        hermes_id = obj.get("id")
        session = obj.get("sessionId", obj.get("session_id"))
        say = HermesSay(
            hermes_id=str(hermes_id) if isinstance(hermes_id, (str, int)) and hermes_id != "" else None,
            site_id=self.site_id,
            session_id=session if isinstance(session, str) else None,
            snake_case="siteId" not in obj and ("site_id" in obj or "session_id" in obj),
        )
        reusable = say.hermes_id is not None and say.hermes_id not in self._pending
        request_id = say.hermes_id if reusable and say.hermes_id is not None else new_request_id()
        try:
            request = self._request(obj, payload, request_id, received_at)
        except BadRequest as exc:
            self._fail(request_id, say, exc.code, exc.message)
            return
        self._pending[request.id] = say
        _LOGGER.info("hermes say %s (session %s) -> request %s", say.hermes_id, say.session_id, request.id)
        self._submit(request)

    def _request(self, obj: dict[str, Any], payload: bytes, request_id: str, received_at: float) -> SayRequest:
        """Hermes' own fields, checked as the MQTT parser checks them (types, limits, volume range)."""
        if len(payload) > self._limits.max_payload_bytes:
            raise BadRequest(
                ErrorCode.PAYLOAD_TOO_LARGE,
                f"payload is {len(payload)} bytes; the limit is {self._limits.max_payload_bytes} "
                "(speech.max_payload_bytes)",
            )
        text, volume, lang = obj.get("text"), obj.get("volume"), obj.get("lang")
        if text is None:
            raise BadRequest(ErrorCode.MISSING_FIELD, "'text' is required")
        if not isinstance(text, str):
            raise BadRequest(ErrorCode.WRONG_TYPE, f"'text' must be a string, got {type(text).__name__}")
        if volume is not None and (isinstance(volume, bool) or not isinstance(volume, (int, float))):
            raise BadRequest(ErrorCode.WRONG_TYPE, f"'volume' must be a number, got {type(volume).__name__}")
        if lang is not None and not isinstance(lang, str):
            raise BadRequest(ErrorCode.WRONG_TYPE, f"'lang' must be a string, got {type(lang).__name__}")
        checked_volume = check_volume(None if volume is None else float(volume))
        return SayRequest(
            text=clean_text(text, self._limits),
            id=request_id,
            volume=1.0 if checked_volume is None else checked_volume,
            language=check_language(lang),
            received_at=received_at,
            source="hermes",
        )

    def on_event(self, event: OutEvent) -> None:
        """Every event the daemon emits passes here; a Hermes request's end gets the replies."""
        if not event.is_end or event.id is None:
            return
        if event.event == "error" and event.extras.get("code") == "unknown_id":
            return  # a stop for an id that had already ended: not this request's end
        say = self._pending.pop(event.id, None)
        if say is None:
            return
        if event.event == "error":
            self._reply(ERROR, say, {"error": str(event.extras.get("message", "")), "context": say.hermes_id})
        self._reply(SAY_FINISHED, say, {"id": say.hermes_id})

    def _fail(self, request_id: str, say: HermesSay, code: ErrorCode, message: str) -> None:
        _LOGGER.warning("hermes/tts/say rejected: %s: %s", code, message)
        self._emit(error_event(request_id, code, message, topic=SAY))
        self._reply(ERROR, say, {"error": message, "context": say.hermes_id})
        self._reply(SAY_FINISHED, say, {"id": say.hermes_id})

    def _reply(self, topic: str, say: HermesSay, fields: dict[str, Any]) -> None:
        if say.snake_case:
            body = {**fields, "site_id": say.site_id, "session_id": say.session_id}
        else:
            body = {**fields, "siteId": say.site_id, "sessionId": say.session_id}
        self._publish(topic, json.dumps(body, ensure_ascii=False), False)
