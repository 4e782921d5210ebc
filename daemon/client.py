"""`chatterd say`: publish one request and wait for its end event, as a shell or cron job would."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

import aiomqtt

from daemon.config import MqttConfig, load_config
from daemon.errors import ConfigError
from daemon.events import END_EVENTS
from daemon.messages import new_request_id
from daemon.mqtt import Topics, tls_context


def client_config(
    config_path: Path | None, host: str | None = None, port: int | None = None, site: str | None = None
) -> MqttConfig:
    """The `mqtt` section of the config file (or the defaults), with command-line overrides."""
    mqtt = load_config(config_path).mqtt if config_path is not None else MqttConfig()
    try:
        return dataclasses.replace(
            mqtt,
            host=mqtt.host if host is None else host,
            port=mqtt.port if port is None else port,
            site=mqtt.site if site is None else site,
        )
    except ValueError as exc:
        raise ConfigError(f"command line: {exc}") from None


def say(mqtt: MqttConfig, text: str, voice: str | None, timeout: float) -> int:
    """Speak `text` through the daemon; prints the end event. 0 = finished, 1 = any other end or a timeout."""
    try:
        event = asyncio.run(_say(mqtt, text, voice, timeout))
    except aiomqtt.MqttError as exc:
        print(
            f"chatterd say: cannot talk to the MQTT broker at {mqtt.host}:{mqtt.port}: {exc}", file=sys.stderr
        )
        return 2
    except asyncio.TimeoutError:
        print(
            f"chatterd say: no end event within {timeout:g} s (is chatterd running on {mqtt.base_topic}?)",
            file=sys.stderr,
        )
        return 1
    except _Offline:
        print(f"chatterd say: chatterd on {mqtt.base_topic} is offline", file=sys.stderr)
        return 1
    print(json.dumps(event, ensure_ascii=False))
    return 0 if event.get("event") == "finished" else 1


class _Offline(Exception):
    pass


async def _say(mqtt: MqttConfig, text: str, voice: str | None, timeout: float) -> dict[str, Any]:
    topics = Topics(mqtt.base_topic)
    request: dict[str, Any] = {"text": text, "id": new_request_id()}
    if voice is not None:
        request["voice"] = voice
    async with aiomqtt.Client(
        mqtt.host,
        mqtt.port,
        username=mqtt.username,
        password=mqtt.resolve_password(),
        tls_context=tls_context(mqtt),
        tls_insecure=mqtt.tls_insecure if mqtt.uses_tls else None,
    ) as client:
        # Subscribe before publishing so the end event cannot slip past.
        await client.subscribe([(topics.event, 1), (topics.status, 1)])
        await client.publish(topics.say, json.dumps(request), qos=mqtt.qos)
        return await asyncio.wait_for(_end_event(client, topics, request["id"]), timeout)


async def _end_event(client: aiomqtt.Client, topics: Topics, request_id: str) -> dict[str, Any]:
    async for message in client.messages:
        payload = message.payload if isinstance(message.payload, bytes) else b""
        if message.topic.matches(topics.status):
            if payload == b"offline":
                raise _Offline
            continue
        try:
            event = json.loads(payload)
        except ValueError:
            continue
        if isinstance(event, dict) and event.get("id") == request_id and event.get("event") in END_EVENTS:
            return event
    raise aiomqtt.MqttError("disconnected while waiting for the end event")
