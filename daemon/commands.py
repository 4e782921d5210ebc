"""The MQTT command front-end: `<base>/say`, `<base>/stop` and `<base>/volume/set`.

Each message is parsed at the edge (`daemon.messages`) into a service call; bad input becomes an
`error` event naming the topic and what was wrong, and the next message is handled normally.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Protocol

from daemon.admission import EmitFn
from daemon.config import SpeechConfig
from daemon.errors import BadRequest
from daemon.events import error_event
from daemon.messages import SayRequest, parse_say, parse_stop, parse_volume, request_id_of
from daemon.mqtt import MessageHandler, Topics

_LOGGER = logging.getLogger("daemon")


class Service(Protocol):
    def submit(self, request: SayRequest) -> bool: ...
    def stop_all(self) -> None: ...
    def stop(self, request_id: str) -> bool: ...


class Volume(Protocol):
    volume: float


class Router:
    """Turns the command topics' messages into service calls; see the module docstring."""

    def __init__(self, topics: Topics, service: Service, player: Volume, limits: SpeechConfig, emit: EmitFn) -> None:
        self._topics = topics
        self._service = service
        self._player = player
        self._limits = limits
        self._emit = emit
        self._table: dict[str, MessageHandler] = {
            topics.say: self._say,
            topics.stop: self._stop,
            topics.volume_set: self._volume_set,
        }

    def routes(self) -> Mapping[str, MessageHandler]:
        """The topics this front-end serves, for `MqttLink.add_routes`."""
        return {topic: self.handle for topic in self._table}

    def handle(self, topic: str, payload: bytes, received_at: float) -> None:
        handler = self._table.get(topic)
        if handler is None:
            _LOGGER.debug("ignoring a message on %s", topic)
            return
        try:
            handler(topic, payload, received_at)
        except BadRequest as exc:
            request_id = request_id_of(payload)
            _LOGGER.warning("bad message on %s (id %s): %s: %s", topic, request_id, exc.code, exc.message)
            self._emit(error_event(request_id, exc.code, exc.message, topic=topic))

    def _say(self, topic: str, payload: bytes, received_at: float) -> None:
        self._service.submit(parse_say(payload, received_at, self._limits))

    def _stop(self, topic: str, payload: bytes, received_at: float) -> None:
        request_id = parse_stop(payload, self._limits)
        if request_id is None:
            self._service.stop_all()
        else:
            self._service.stop(request_id)

    def _volume_set(self, topic: str, payload: bytes, received_at: float) -> None:
        self._player.volume = parse_volume(payload, self._limits)
        _LOGGER.info("master volume set to %.2f", self._player.volume)
