"""An in-process daemon against a real broker, and MQTT clients that watch it.

This is the one place tests wait on MQTT: every wait is bounded (`timeout`) and wakes on the
message it waits for, never on a sleep.

* `listening(broker, topic_filter, base=..., timeout=..., client_id=..., **client)` -> `Listener`:
  a client subscribed to `topic_filter` that records every message as a `Received` (topic,
  payload, retain, arrival time). With a `client_id` it keeps a persistent session and reconnects
  through broker outages; `client` goes to `aiomqtt.Client` (username, password). Helpers:
  `wait_for`, `until`, `event`, `end_of`, `events`, `ends`, `names`, `states`, `on`, `publish`,
  `say`; `base` is the site's topic prefix, `timeout` the default wait.
* "Nothing else arrives" is checked behind a barrier, not after a sleep: `barrier()` sends the
  daemon a say it rejects at once and waits for that error event. The daemon handles messages in
  order and publishes through one FIFO outbox, so whatever it publishes in answer to the messages
  sent before the barrier has arrived by then. `broker_barrier()` is the same without a daemon
  (a message of the listener's own, e.g. behind the retained messages a subscription receives).
  Barrier events are left out of `events()`, `ends()` and `names()`.
* `collecting(broker)` -> `Listener`: everything under `<base>/#` for site `res`, through its own
  persistent session, across outages.
* `running(config, engine, sink, **run_args)`: `app.run` as a task, cancelled (clean shutdown) on exit.
* `make_config`, `publish`, `online_at`: the config for site `res`, a QoS 1 publisher, and the
  `online` status messages seen (with their retain flag: a live one marks a (re)connect).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiomqtt
from conftest import Broker

from daemon import app
from daemon.config import Config, config_from_dict
from daemon.player import Sink
from daemon.speech import SpeechEngine

SITE = "res"
BASE = f"chatterd/{SITE}"
TIMEOUT = 20.0
END_EVENTS = ("finished", "stopped", "dropped", "error")
# Topics `Listener.publish` sends as given rather than under `<base>/`.
FOREIGN_PREFIXES = ("hermes/", "homeassistant/")
BARRIER_PREFIX = "test-barrier-"  # request ids (and a topic) of `Listener.barrier`/`broker_barrier`


@dataclass(frozen=True)
class Received:
    topic: str
    payload: bytes
    retain: bool
    at: float  # time.monotonic() on arrival

    def json(self) -> dict[str, Any]:
        return json.loads(self.payload)  # type: ignore[no-any-return]


class Listener:
    """Records every message its client receives, with its arrival time; waits over them.

    `base` is the site's topic prefix (`chatterd/<site>`) the helpers read events and states
    under; `timeout` is the default for every wait.
    """

    def __init__(self, base: str = BASE, timeout: float = TIMEOUT, topic_filter: str = "#") -> None:
        self.base = base
        self.timeout = timeout
        self.topic_filter = topic_filter
        self._client: aiomqtt.Client | None = None
        self.received: list[Received] = []
        self._changed = asyncio.Event()
        self._barriers = itertools.count()

    @property
    def client(self) -> aiomqtt.Client:
        """The current connection (the latest one, for a reconnecting listener)."""
        assert self._client is not None, "not connected"
        return self._client

    async def read(self, client: aiomqtt.Client) -> None:
        """Record what `client` receives until its connection ends."""
        async for message in client.messages:
            payload = message.payload if isinstance(message.payload, bytes) else b""
            self.received.append(Received(message.topic.value, payload, message.retain, time.monotonic()))
            self._changed.set()

    async def wait_for(self, predicate: Callable[[Received], bool], timeout: float | None = None) -> Received:
        """The first message received (so far or later) that `predicate` accepts."""

        async def scan() -> Received:
            while True:
                for item in self.received:
                    if predicate(item):
                        return item
                self._changed.clear()
                await self._changed.wait()

        return await asyncio.wait_for(scan(), self.timeout if timeout is None else timeout)

    async def until(self, condition: Callable[[], bool], timeout: float | None = None) -> None:
        """Wait until `condition()` holds over what has been received."""

        async def scan() -> None:
            while not condition():
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(scan(), self.timeout if timeout is None else timeout)

    def _is_event(self, r: Received) -> bool:
        return r.topic == f"{self.base}/event"

    async def barrier(self, timeout: float | None = None) -> None:
        """Return once the daemon has answered everything published before (see the module docstring)."""
        request_id = f"{BARRIER_PREFIX}{next(self._barriers)}"
        await self.publish("say", json.dumps({"text": "", "id": request_id}))
        await self.end_of(request_id, timeout)

    async def broker_barrier(self, timeout: float | None = None) -> None:
        """Return once the broker has delivered everything it had for this client before now."""
        assert self.topic_filter.endswith("#"), f"{self.topic_filter!r} does not cover a barrier topic"
        topic = f"{self.topic_filter[:-1]}{BARRIER_PREFIX.rstrip('-')}"
        token = str(next(self._barriers)).encode()
        await self.client.publish(topic, token, qos=1)
        await self.wait_for(lambda r: r.topic == topic and r.payload == token, timeout)

    async def event(self, name: str, request_id: str | None = None, timeout: float | None = None) -> dict[str, Any]:
        """The first `name` event (of `request_id`, or of any request when None)."""
        item = await self.wait_for(
            lambda r: (
                self._is_event(r)
                and r.json()["event"] == name
                and (request_id is None or r.json()["id"] == request_id)
            ),
            timeout,
        )
        return item.json()

    async def end_of(self, request_id: str, timeout: float | None = None) -> dict[str, Any]:
        """The first end event (finished, stopped, dropped, error) of `request_id`."""
        item = await self.wait_for(
            lambda r: self._is_event(r) and r.json()["id"] == request_id and r.json()["event"] in END_EVENTS,
            timeout,
        )
        return item.json()

    def events(self, request_id: str | None = None) -> list[dict[str, Any]]:
        """The events received (of `request_id`, or all), barriers left out."""
        found = [r.json() for r in self.received if self._is_event(r)]
        found = [e for e in found if not str(e["id"] or "").startswith(BARRIER_PREFIX)]
        return [e for e in found if request_id is None or e["id"] == request_id]

    def ends(self, request_id: str) -> list[dict[str, Any]]:
        return [e for e in self.events() if e["id"] == request_id and e["event"] in END_EVENTS]

    def names(self, request_id: str) -> list[str]:
        return [e["event"] for e in self.events(request_id)]

    def states(self, topic: str) -> list[str]:
        """Payloads received on `<base>/<topic>`, decoded."""
        return [r.payload.decode() for r in self.received if r.topic == f"{self.base}/{topic}"]

    def on(self, topic: str) -> list[Received]:
        """Messages received on the full `topic`."""
        return [r for r in self.received if r.topic == topic]

    async def publish(self, topic: str, payload: bytes | str, retain: bool = False) -> None:
        """QoS 1 to `<base>/<topic>`, or to `topic` itself for Hermes and Home Assistant topics."""
        full = topic if topic.startswith(FOREIGN_PREFIXES) else f"{self.base}/{topic}"
        await self.client.publish(full, payload, qos=1, retain=retain)

    async def say(self, text: str, request_id: str, **fields: Any) -> None:
        await self.publish("say", json.dumps({"text": text, "id": request_id, **fields}))

    async def follow(
        self, broker: Broker, topic_filter: str, client_id: str, connected: asyncio.Event, **client_args: Any
    ) -> None:
        """Record through a persistent session, reconnecting whenever the connection is lost."""
        while True:
            try:
                async with aiomqtt.Client(
                    broker.host, broker.port, identifier=client_id, clean_session=False, **client_args
                ) as client:
                    await client.subscribe(topic_filter, qos=1)
                    self._client = client
                    connected.set()
                    await self.read(client)
            except aiomqtt.MqttError:
                connected.clear()
                await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def listening(
    broker: Broker,
    topic_filter: str,
    *,
    base: str = BASE,
    timeout: float = TIMEOUT,
    client_id: str | None = None,
    **client_args: Any,
) -> AsyncIterator[Listener]:
    """A `Listener` subscribed (QoS 1) to `topic_filter` for the body of the `async with`.

    Without `client_id`: one clean-session connection, made and subscribed before the body runs.
    With `client_id`: a persistent session that reconnects through broker outages; the body runs
    once the first connection is subscribed (within `timeout`). `client_args` go to aiomqtt.Client.
    """
    listener = Listener(base, timeout, topic_filter)
    if client_id is None:
        async with aiomqtt.Client(broker.host, broker.port, **client_args) as client:
            await client.subscribe(topic_filter, qos=1)
            listener._client = client
            reader = asyncio.create_task(listener.read(client))
            try:
                yield listener
            finally:
                reader.cancel()
                await asyncio.gather(reader, return_exceptions=True)
        return
    connected = asyncio.Event()
    task = asyncio.create_task(listener.follow(broker, topic_filter, client_id, connected, **client_args))
    try:
        await asyncio.wait_for(connected.wait(), timeout)
        yield listener
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def collecting(broker: Broker, client_id: str = "test-collector") -> contextlib.AbstractAsyncContextManager[Listener]:
    """Everything under `<base>/#` (site `res`) through its own persistent session, across outages."""
    return listening(broker, f"{BASE}/#", client_id=client_id)


@contextlib.asynccontextmanager
async def running(
    config: Config, engine: SpeechEngine, sink: Sink, **run_args: Any
) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(app.run(config, engine, sink, **run_args))
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


def online_at(collector: Listener) -> list[tuple[float, bool]]:
    """(time, retained) of every `online` the collector saw on the status topic."""
    return [(r.at, r.retain) for r in collector.received if r.topic == f"{BASE}/status" and r.payload == b"online"]
