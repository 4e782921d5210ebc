"""Run-time settings over MQTT: the master volume and the default voice, with retained state.

`<base>/volume/set` (handled by the Router) and `<base>/voice/set` change them; the current values
are published retained on `<base>/volume` and `<base>/voice` at every (re)connect (`publish_state`,
an `on_connected` callback) and after every change, so dashboards (Home Assistant's number and
select entities) always show the truth.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

from daemon.admission import EmitFn
from daemon.events import ErrorCode, error_event
from daemon.mqtt import MessageHandler, MqttLink
from daemon.player import Player
from daemon.speech import SpeechService

_LOGGER = logging.getLogger(__name__)


class Controls:
    """Handles `<base>/voice/set` and publishes the volume and voice state; see the module docstring."""

    def __init__(
        self, link: MqttLink, service: SpeechService, player: Player, voices: tuple[str, ...], emit: EmitFn
    ) -> None:
        base = link.topics.base
        self.volume_topic = f"{base}/volume"
        self.voice_topic = f"{base}/voice"
        self.voice_set_topic = f"{base}/voice/set"
        self._volume_set_topic = link.topics.volume_set
        self._publish: Callable[[str, str, bool], None] = link.publish
        self._service = service
        self._player = player
        self._voices = voices
        self._emit = emit

    def routes(self) -> Mapping[str, MessageHandler]:
        """Registered after the Router's: a volume change is applied before its state is published."""
        return {self._volume_set_topic: self.handle, self.voice_set_topic: self.handle}

    def publish_state(self) -> None:
        self._publish(self.volume_topic, f"{self._player.volume:g}", True)
        self._publish(self.voice_topic, self._service.default_voice, True)

    def handle(self, topic: str, payload: bytes, received_at: float) -> None:
        """After the Router: publish the volume state; set the default voice."""
        if topic == self._volume_set_topic:
            self._publish(self.volume_topic, f"{self._player.volume:g}", True)
        elif topic == self.voice_set_topic:
            name = payload.decode("utf-8", errors="replace").strip()
            if name not in self._voices:
                message = f"unknown voice {name[:40]!r}; known voices: {', '.join(self._voices)}"
                _LOGGER.warning("voice/set: %s", message)
                self._emit(error_event(None, ErrorCode.UNKNOWN_VOICE, message, topic=topic))
            else:
                self._service.default_voice = name
                _LOGGER.info("default voice set to %s", name)
            self._publish(self.voice_topic, self._service.default_voice, True)
