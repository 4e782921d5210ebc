"""Home Assistant discovery, checked against HA's own MQTT schemas (transcribed in ha_schemas.py,
which says from which HA sources and why not the `homeassistant` package itself), and HA's
birth message followed on `homeassistant/status` whatever the discovery prefix."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import tomllib
from conftest import Broker, require_module
from fakes import FakeEngine, PacedSink
from harness import Listener, listening, running

import daemon
from daemon.config import HomeAssistantConfig, config_from_dict
from daemon.homeassistant import HomeAssistantDiscovery, discovery_messages

require_module("voluptuous", "pip install -e '.[dev]'")

import voluptuous as vol  # noqa: E402  (after the check above)
from ha_schemas import DISCOVERY_SCHEMAS  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
COMMAND_PLATFORMS = {"notify", "button", "number", "select"}


def _messages(**ha: Any) -> dict[str, dict[str, Any]]:
    config = HomeAssistantConfig(enabled=True, **ha)
    return {m.topic.split("/")[-3]: m.config for m in discovery_messages(config, "chatterd/k", "k", ("a", "b"))}


def test_every_discovery_payload_passes_home_assistants_schema() -> None:
    messages = _messages(device_name="Kitchen speaker")
    assert set(messages) == set(DISCOVERY_SCHEMAS)
    for platform, config in messages.items():
        # As HA receives it: through JSON.
        DISCOVERY_SCHEMAS[platform](json.loads(json.dumps(config)))


@pytest.mark.parametrize(
    "platform, change, complaint",
    [
        ("notify", lambda c: c.pop("command_topic"), "command_topic"),
        ("notify", lambda c: c.update(comand_topic="x"), "extra keys"),  # HA would drop it silently
        ("select", lambda c: c.update(command_topic="a/+/b"), "Wildcards"),
        ("button", lambda c: c["origin"].update(support_url="github.com/x"), "url"),
        ("event", lambda c: c.pop("event_types"), "event_types"),
        ("number", lambda c: c.update(min=2, max=1), "max must be"),
        ("binary_sensor", lambda c: c["device"].pop("identifiers"), "identifying value"),
        ("notify", lambda c: c.update(qos=3), "qos"),
    ],
)
def test_the_schemas_reject_what_home_assistant_rejects(platform: str, change: Any, complaint: str) -> None:
    config = copy.deepcopy(_messages()[platform])
    change(config)
    with pytest.raises(vol.Invalid, match=complaint):
        DISCOVERY_SCHEMAS[platform](config)


def test_command_entities_use_qos_1() -> None:
    for platform, config in _messages().items():
        assert config.get("qos", 0) == (1 if platform in COMMAND_PLATFORMS else 0), platform


def test_origin_names_this_project_and_versions_come_from_the_package() -> None:
    for config in _messages().values():
        assert config["origin"]["support_url"] == daemon.PROJECT_URL
        assert "resemble-ai" not in config["origin"]["support_url"]
        assert config["origin"]["sw_version"] == config["device"]["sw_version"] == daemon.__version__
    assert daemon.__version__ != "0.0.0"
    # pyproject.toml takes its version from the same place, so the two cannot drift.
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert project["project"]["dynamic"] == ["version"] and "version" not in project["project"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "daemon.__version__"}


class _Link:
    """What HomeAssistantDiscovery uses of an MqttLink: it records publishes and subscriptions."""

    def __init__(self) -> None:
        self.topics = SimpleNamespace(base="chatterd/k")
        self.config = SimpleNamespace(site="k")
        self.subscriptions: list[str] = []
        self.on_connected: list[Any] = []
        self.published: list[str] = []

    def publish(self, topic: str, payload: str, retain: bool) -> None:
        self.published.append(topic)


def test_the_birth_topic_is_homeassistant_status_whatever_the_discovery_prefix() -> None:
    link = _Link()
    ha = HomeAssistantDiscovery(HomeAssistantConfig(enabled=True, discovery_prefix="ha-discovery"), link, ("a",))
    assert list(ha.routes()) == ["homeassistant/status"]  # the link subscribes to its routes
    ha.handle("ha-discovery/status", b"online", 0.0)
    assert link.published == []
    ha.handle("homeassistant/status", b"online", 0.0)
    assert len(link.published) == 6 and all(t.startswith("ha-discovery/") for t in link.published)
    moved = HomeAssistantDiscovery(HomeAssistantConfig(enabled=True, birth_topic="hass/birth"), _Link(), ("a",))
    assert list(moved.routes()) == ["hass/birth"]


def _configs(listener: Listener, prefix: str) -> list[str]:
    return [r.topic for r in listener.received if r.topic.startswith(prefix + "/") and r.topic.endswith("/config")]


async def test_birth_message_on_homeassistant_status_with_a_custom_discovery_prefix(
    mosquitto: Broker, tmp_path: Path
) -> None:
    config = config_from_dict(
        {
            "mqtt": {"host": mosquitto.host, "port": mosquitto.port, "site": "birth"},
            "audio": {"output": f"wav:{tmp_path / 'out.wav'}"},
            "integrations": {"home_assistant": {"enabled": True, "discovery_prefix": "ha-discovery"}},
        }
    )
    async with listening(mosquitto, "#", base="chatterd/birth") as ear:
        engine = FakeEngine()
        async with running(config, engine, PacedSink(engine.sample_rate, pace=0.0)):
            await ear.until(lambda: len(_configs(ear, "ha-discovery")) == 6)
            await ear.publish("homeassistant/status", "online")
            await ear.until(lambda: len(_configs(ear, "ha-discovery")) == 12)
