"""Home Assistant MQTT discovery: the daemon appears in HA as one device with six entities.

| entity | platform | wiring |
|---|---|---|
| Say | notify | `command_topic` `<base>/say` (HA publishes the raw message string) |
| Speaking | binary_sensor (sound) | `state_topic` `<base>/speaking`, ON / OFF |
| Stop | button | `command_topic` `<base>/stop`, payload `{}` (stop and clear the queue) |
| Volume | number 0..1 | `command_topic` `<base>/volume/set`, `state_topic` `<base>/volume` |
| Voice | select | `command_topic` `<base>/voice/set`, `state_topic` `<base>/voice`, the voices as options |
| Request | event | `state_topic` `<base>/event`; `event_type` is the event's name |

Every config carries `unique_id` (also its topic's object id), the shared `device` block, the
`origin` block and `availability` on `<base>/status` (`online` / `offline`, the Last Will). The
command entities carry `qos: 1`: Home Assistant publishes commands at QoS 0 unless told, and a
QoS 0 "Say" sent while the daemon reconnects is lost, where QoS 1 waits in its persistent session.
Configs are published retained at every (re)connect and again whenever HA announces itself with
`online` on its birth topic (`birth_topic`, `homeassistant/status` by default: HA's birth message
does not follow the discovery prefix). `sw_version` is `daemon.__version__`. With the integration
disabled, the daemon publishes an empty retained config on each of these topics, which removes
entities an earlier run announced.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from daemon import PROJECT_URL, __version__
from daemon.config import HomeAssistantConfig
from daemon.events import END_EVENTS
from daemon.mqtt import MessageHandler, MqttLink

_LOGGER = logging.getLogger(__name__)

EVENT_TYPES = ("queued", "started", *sorted(END_EVENTS))
# HA's event entity wants `event_type` in the payload; the daemon's events name it `event`.
EVENT_TEMPLATE = "{{ dict(value_json, event_type=value_json.event) | tojson }}"
# Commands at QoS 1, so that one sent while the daemon is offline waits in its session.
COMMAND_QOS = 1


@dataclass(frozen=True)
class DiscoveryMessage:
    topic: str
    config: dict[str, Any]


def object_id(site: str, entity: str) -> str:
    """A discovery object id / unique id: `chatterd_<site>_<entity>` in HA's [a-zA-Z0-9_-]."""
    return re.sub(r"[^a-zA-Z0-9_-]", "_", f"chatterd_{site}_{entity}")


def discovery_messages(
    config: HomeAssistantConfig, base: str, site: str, voices: tuple[str, ...]
) -> list[DiscoveryMessage]:
    """The retained discovery configs for this daemon (see the module docstring)."""
    version = __version__
    device = {
        "identifiers": [object_id(site, "device")],
        "name": config.device_name or f"chatterd {site}",
        "manufacturer": "chatterd",
        "model": "Chatterbox TTS speaker",
        "sw_version": version,
    }
    origin = {"name": "chatterd", "sw_version": version, "support_url": PROJECT_URL}
    common = {
        "availability": [{"topic": f"{base}/status", "payload_available": "online",
                          "payload_not_available": "offline"}],
        "device": device,
        "origin": origin,
    }
    entities: list[tuple[str, str, dict[str, Any]]] = [
        ("notify", "say", {"name": "Say", "command_topic": f"{base}/say", "qos": COMMAND_QOS,
                           "icon": "mdi:bullhorn"}),
        ("binary_sensor", "speaking", {"name": "Speaking", "state_topic": f"{base}/speaking",
                                       "payload_on": "ON", "payload_off": "OFF", "device_class": "sound"}),
        ("button", "stop", {"name": "Stop", "command_topic": f"{base}/stop", "payload_press": "{}",
                            "qos": COMMAND_QOS, "icon": "mdi:stop"}),
        ("number", "volume", {"name": "Volume", "command_topic": f"{base}/volume/set",
                              "state_topic": f"{base}/volume", "min": 0.0, "max": 1.0, "step": 0.05,
                              "mode": "slider", "qos": COMMAND_QOS, "icon": "mdi:volume-high"}),
        ("select", "voice", {"name": "Voice", "command_topic": f"{base}/voice/set",
                             "state_topic": f"{base}/voice", "options": list(voices),
                             "qos": COMMAND_QOS, "icon": "mdi:account-voice"}),
        ("event", "request", {"name": "Request", "state_topic": f"{base}/event",
                              "event_types": list(EVENT_TYPES),
                              "value_template": EVENT_TEMPLATE,
                              "icon": "mdi:message-processing"}),
    ]
    messages = []
    for platform, entity, fields in entities:
        uid = object_id(site, entity)
        payload = {**fields, "unique_id": uid, **common}
        messages.append(DiscoveryMessage(f"{config.discovery_prefix}/{platform}/{uid}/config", payload))
    return messages


class HomeAssistantDiscovery:
    """Publishes (or, disabled, removes) the discovery configs; see the module docstring."""

    def __init__(self, config: HomeAssistantConfig, link: MqttLink, voices: tuple[str, ...]) -> None:
        self.config = config
        self.birth_topic = config.birth_topic
        self.messages = discovery_messages(config, link.topics.base, link.config.site, voices)
        self._publish = link.publish
        self._removed = False

    def routes(self) -> Mapping[str, MessageHandler]:
        return {self.birth_topic: self.handle} if self.config.enabled else {}

    def on_connected(self) -> None:
        """Every (re)connect: announce the entities, or (disabled) remove them once."""
        if self.config.enabled:
            self.announce()
        else:
            self._remove_once()

    def announce(self) -> None:
        for message in self.messages:
            self._publish(message.topic, json.dumps(message.config, ensure_ascii=False), True)
        _LOGGER.info("Home Assistant discovery: %d entities announced", len(self.messages))

    def _remove_once(self) -> None:
        if not self._removed:
            self._removed = True
            self.remove()

    def remove(self) -> None:
        for message in self.messages:
            self._publish(message.topic, "", True)

    def handle(self, topic: str, payload: bytes, received_at: float) -> None:
        if self.config.enabled and topic == self.birth_topic and payload.strip() == b"online":
            _LOGGER.info("Home Assistant came online: announcing the entities again")
            self.announce()
