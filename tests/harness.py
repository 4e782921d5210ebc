"""An in-process daemon against a real broker, and an MQTT client that watches it.

* `running(config, engine, sink)`: `app.run` as a task, cancelled (clean shutdown) on exit.
* `collecting(broker)` -> `Collector`: records everything under `<base>/#` through its own
  persistent session and reconnects through broker outages; `until`, `end_of`, `ends`.
* `make_config`, `publish`, `online_at`: the config for site `res`, a QoS 1 publisher, and the
  `online` status messages seen (with their retain flag: a live one marks a (re)connect).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt
from conftest import Broker

from daemon import app
from daemon.config import Config, config_from_dict
from daemon.messages import END_EVENTS
from daemon.player import Sink
from daemon.speech import SpeechEngine

SITE = "res"
BASE = f"chatterd/{SITE}"
TIMEOUT = 20.0


@dataclass
class Collector:
    """Records everything under `<base>/#` through its own persistent session, across outages."""

    broker: Broker
    client_id: str = "test-collector"
    received: list[tuple[str, bytes, bool, float]] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    connected: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        while True:
            try:
                async with aiomqtt.Client(
                    self.broker.host, self.broker.port, identifier=self.client_id, clean_session=False
                ) as client:
                    await client.subscribe(f"{BASE}/#", qos=1)
                    self.connected.set()
                    async for message in client.messages:
                        payload = message.payload if isinstance(message.payload, bytes) else b""
                        self.received.append((message.topic.value, payload, message.retain, time.monotonic()))
                        self.changed.set()
            except aiomqtt.MqttError:
                self.connected.clear()
                await asyncio.sleep(0.05)

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(p) for t, p, _, _ in self.received if t == f"{BASE}/event"]

    def ends(self, request_id: str) -> list[dict[str, Any]]:
        return [e for e in self.events() if e["id"] == request_id and e["event"] in END_EVENTS]

    async def until(self, condition: Callable[[], bool], timeout: float = TIMEOUT) -> None:
        async def scan() -> None:
            while not condition():
                self.changed.clear()
                await self.changed.wait()

        await asyncio.wait_for(scan(), timeout)

    async def end_of(self, request_id: str, timeout: float = TIMEOUT) -> dict[str, Any]:
        await self.until(lambda: bool(self.ends(request_id)), timeout)
        return self.ends(request_id)[0]


@contextlib.asynccontextmanager
async def collecting(broker: Broker, client_id: str = "test-collector") -> AsyncIterator[Collector]:
    collector = Collector(broker, client_id)
    task = asyncio.create_task(collector.run())
    try:
        await asyncio.wait_for(collector.connected.wait(), TIMEOUT)
        yield collector
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


@contextlib.asynccontextmanager
async def running(config: Config, engine: SpeechEngine, sink: Sink) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(app.run(config, engine, sink))
    try:
        yield task
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def make_config(broker: Broker, tmp_path: Path, mqtt: dict[str, Any] | None = None, **speech: Any) -> Config:
    return config_from_dict(
        {
            "mqtt": {"host": broker.host, "port": broker.port, "site": SITE, "reconnect_min_s": 0.2,
                     **(mqtt or {})},
            "audio": {"output": f"wav:{tmp_path / 'unused.wav'}"},
            "speech": speech,
        }
    )


async def publish(broker: Broker, messages: list[tuple[str, str | bytes]], **client: Any) -> None:
    async with aiomqtt.Client(broker.host, broker.port, **client) as publisher:
        for topic, payload in messages:
            await publisher.publish(f"{BASE}/{topic}", payload, qos=1)


def online_at(collector: Collector) -> list[tuple[float, bool]]:
    """(time, retained) of every `online` the collector saw on the status topic."""
    return [(at, retain) for t, p, retain, at in collector.received if t == f"{BASE}/status" and p == b"online"]
