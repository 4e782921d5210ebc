"""Rhasspy / Snips Hermes text to speech: `hermes/tts/say` in, `hermes/tts/sayFinished` out.

A say message for this daemon's site (`siteId`, or `site_id` as rhasspy-hermes' own CLI writes
it; absent means "default") becomes an ordinary request (`text`, `id`, `volume`; `lang` is
accepted and ignored). When the request ends, however it ends, the daemon publishes
`hermes/tts/sayFinished` `{"id", "siteId", "sessionId"}` (the say's id and session, echoed). When
it ended in an error, `hermes/error/tts` `{"error", "context", "siteId", "sessionId"}` goes out
first, as Rhasspy's own TTS service does.

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
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from daemon.config import SpeechConfig
from daemon.errors import BadRequest
from daemon.messages import Event, SayRequest, error_event, new_request_id, parse_say
from daemon.mqtt import MqttLink
from daemon.speech import EmitFn

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
        link.subscriptions.append(SAY)

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
            self._fail(new_request_id(), say, "invalid_json", "hermes/tts/say payload must be a JSON object")
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
        # Hermes' own fields, re-checked by the daemon's parser (types, limits, volume range).
        fields = {k: obj[k] for k in ("text", "volume") if k in obj}
        reusable = say.hermes_id is not None and say.hermes_id not in self._pending
        fields["id"] = say.hermes_id if reusable else new_request_id()
        try:
            request = parse_say(json.dumps(fields).encode(), received_at, self._limits, source="hermes")
        except BadRequest as exc:
            self._fail(str(fields["id"]), say, exc.code, exc.message)
            return
        self._pending[request.id] = say
        _LOGGER.info("hermes say %s (session %s) -> request %s", say.hermes_id, say.session_id, request.id)
        self._submit(request)

    def on_event(self, event: Event) -> None:
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

    def _fail(self, request_id: str, say: HermesSay, code: str, message: str) -> None:
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
