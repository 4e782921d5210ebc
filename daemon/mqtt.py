"""The MQTT side: one aiomqtt 2.x connection, kept up with a jittered-backoff reconnect loop.

Routing: the link owns a table `topic -> handlers`. The daemon's own command topics
(`<base>/say`, `<base>/stop`, `<base>/volume/set`) are always subscribed; the composer (app.py)
registers each front-end's and integration's routes with `route`/`add_routes` before `run`, so
an integration never edits the link itself. A message goes to its topic's handlers in the order
they were registered (then to `run`'s optional `on_message` tap); a failing handler is logged and
the others still run.

Per connection: subscribe the exact topics in `subscriptions` (no wildcards), publish retained
`online` on `<base>/status` (the Last Will publishes retained `offline` if the daemon vanishes)
and the current retained `speaking` state, run the `on_connected` callbacks (integrations re-
publish their retained state there), then read messages and publish the outbox until the
connection drops or `stop()` is called. Every failed attempt or lost connection runs the
`on_offline` callbacks with a one-line reason.

Reconnects back off exponentially from `reconnect_min_s` to `reconnect_max_s`, each wait drawn
uniformly from its upper half (jitter); a connection that was made resets the backoff. The waits
go through `sleep` and the draw through `jitter` (asyncio.sleep and random.uniform unless a test
passes its own); `stop()` cuts a wait short. With `persistent_session` the client id is stable and
clean_session is off, so the broker queues QoS >= 1 messages for us while we are away and
delivers them right after the reconnect.

Everything the daemon publishes (events, the retained `speaking` state) goes through a bounded
outbox, so a broker outage never blocks the speech worker: what was published while offline is
sent after the reconnect, oldest first; past `OUTBOX_LIMIT` the oldest entries are discarded.
On `stop()` the outbox is flushed, retained `offline` is published, and the client disconnects.
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

import aiomqtt

from daemon.config import MqttConfig
from daemon.errors import ConfigError
from daemon.events import OutEvent

_LOGGER = logging.getLogger(__name__)

OUTBOX_LIMIT = 1000
FLUSH_TIMEOUT_S = 5.0  # at shutdown, how long `offline` may take to be acknowledged

# (topic, payload, time.monotonic() at receipt); must not block (it runs on the event loop).
MessageHandler = Callable[[str, bytes, float], None]

# CONNACK codes that mean "your credentials", and what to check: MQTT 3.1.1's 4 and 5, which
# paho 2 reports as the MQTT 5 reason codes 134 and 135.
_BAD_LOGIN = "the broker rejected the user name or password (check mqtt.username and the password)"
_NOT_AUTHORIZED = "the broker refused access (check mqtt.username, the password and the broker's ACL)"
_AUTH_HINTS = {4: _BAD_LOGIN, 134: _BAD_LOGIN, 5: _NOT_AUTHORIZED, 135: _NOT_AUTHORIZED}


@dataclass(frozen=True)
class Topics:
    """The daemon's topics under `<prefix>/<site>`."""

    base: str

    @property
    def say(self) -> str:
        return f"{self.base}/say"

    @property
    def stop(self) -> str:
        return f"{self.base}/stop"

    @property
    def volume_set(self) -> str:
        return f"{self.base}/volume/set"

    @property
    def status(self) -> str:
        return f"{self.base}/status"

    @property
    def speaking(self) -> str:
        return f"{self.base}/speaking"

    @property
    def event(self) -> str:
        return f"{self.base}/event"


@dataclass(frozen=True)
class _Outgoing:
    topic: str
    payload: str
    retain: bool


class MqttLink:
    """The daemon's connection to the broker; see the module docstring for the lifecycle."""

    def __init__(
        self,
        config: MqttConfig,
        outbox_limit: int = OUTBOX_LIMIT,
        *,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        jitter: Callable[[float, float], float] = random.uniform,
    ) -> None:
        self.config = config
        self._sleep = sleep
        self._jitter = jitter
        self.topics = Topics(config.base_topic)
        self.connected = False
        self._outbox: deque[_Outgoing] = deque()
        self._outbox_limit = outbox_limit
        self._outbox_ready = asyncio.Event()
        self._stopping = asyncio.Event()
        self._overflow_logged = False
        self._ready_fired = False
        self._speaking = False
        # Exact topics only: the daemon never subscribes to a wildcard. on_connected runs after every
        # (re)connect, on the loop.
        self._routes: dict[str, list[MessageHandler]] = {
            topic: [] for topic in (self.topics.say, self.topics.stop, self.topics.volume_set)
        }
        self.on_connected: list[Callable[[], None]] = []
        self.on_offline: list[Callable[[str], None]] = []
        # A crashed predecessor may have left `speaking ON` retained: the first connection clears it.
        self.publish_speaking(False)

    # --- routing ---------------------------------------------------------------------------------

    def route(self, topic: str, handler: MessageHandler) -> None:
        """Send messages on `topic` (exact, no wildcards) to `handler` too; call before `run`."""
        if any(c in topic for c in "+#"):
            raise ValueError(f"routes are exact topics, not filters: {topic!r}")
        self._routes.setdefault(topic, []).append(handler)

    def add_routes(self, routes: Mapping[str, MessageHandler]) -> None:
        for topic, handler in routes.items():
            self.route(topic, handler)

    @property
    def subscriptions(self) -> list[str]:
        """The topics subscribed at every (re)connect: the command topics and every routed one."""
        return list(self._routes)

    def dispatch(self, topic: str, payload: bytes, received_at: float) -> None:
        """Hand one message to its topic's handlers; a failing handler does not stop the others."""
        for handler in self._routes.get(topic, ()):
            try:
                handler(topic, payload, received_at)
            except Exception:  # a handler bug must not take the connection down
                _LOGGER.exception("handling a message on %s failed (%r)", topic, handler)

    # --- outgoing, called on the event loop, never blocks ----------------------------------------

    def publish_event(self, event: OutEvent) -> None:
        """Queue an event for `<base>/event` (not retained)."""
        self._enqueue(_Outgoing(self.topics.event, event.to_json(self.config.site), retain=False))

    def publish(self, topic: str, payload: str, retain: bool = False) -> None:
        """Queue any message (integrations: discovery configs, Hermes replies); never blocks."""
        self._enqueue(_Outgoing(topic, payload, retain))

    def publish_speaking(self, speaking: bool) -> None:
        """Queue the retained `<base>/speaking` state.

        While connected every change goes out, however short; while disconnected only the latest
        state is kept, so a reconnect does not replay a stale ON/OFF history.
        """
        self._speaking = speaking
        if not self.connected:
            self._drop_queued(self.topics.speaking)
        self._enqueue(_Outgoing(self.topics.speaking, "ON" if speaking else "OFF", retain=True))

    def _drop_queued(self, topic: str) -> None:
        for outgoing in [o for o in self._outbox if o.topic == topic]:
            self._outbox.remove(outgoing)

    def _enqueue(self, outgoing: _Outgoing) -> None:
        if len(self._outbox) >= self._outbox_limit:
            self._outbox.popleft()
            if not self._overflow_logged:
                _LOGGER.warning("MQTT outbox full (%d); discarding the oldest messages", self._outbox_limit)
                self._overflow_logged = True
        self._outbox.append(outgoing)
        self._outbox_ready.set()

    # --- the connection loop ----------------------------------------------------------------------

    def stop(self) -> None:
        """Ask `run` to flush the outbox, publish `offline` and disconnect."""
        self._stopping.set()
        self._outbox_ready.set()  # wakes the writer

    async def run(
        self, on_message: MessageHandler | None = None, on_ready: Callable[[], None] | None = None
    ) -> None:
        """Stay connected until `stop()`, dispatching messages through the routes (and to `on_message`,
        if given, after them); `on_ready` runs once, after the first subscription."""
        delay = self.config.reconnect_min_s
        while not self._stopping.is_set():
            try:
                async with self._client() as client:
                    delay = self.config.reconnect_min_s
                    await self._serve(client, on_message, on_ready)
                return
            except aiomqtt.MqttError as exc:
                if self._stopping.is_set():
                    if self.connected:
                        _LOGGER.warning("could not publish the last messages and 'offline': %s", exc)
                    return
                # Jitter, so that a fleet of daemons does not reconnect in step after a broker restart.
                wait = self._jitter(delay / 2, delay)
                reason = f"MQTT broker {self.config.host}:{self.config.port}: {describe_error(exc)}"
                _LOGGER.warning("%s; retrying in %.1f s", reason, wait)
                _call_each(self.on_offline, f"{reason}; retrying in {wait:.0f} s")
                await self._pause(wait)
                delay = min(delay * 2, self.config.reconnect_max_s)
            finally:
                self.connected = False

    async def _pause(self, seconds: float) -> None:
        """Wait `seconds` through `sleep`, or until `stop()`, whichever comes first."""
        sleeping = asyncio.ensure_future(self._sleep(seconds))
        stopping = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait({sleeping, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in (sleeping, stopping):
                waiter.cancel()
            await asyncio.gather(sleeping, stopping, return_exceptions=True)

    def _client(self) -> aiomqtt.Client:
        # A fresh client per attempt: no client-side state survives a failed connect. The session
        # (subscriptions, queued messages) lives on the broker under the stable client id.
        try:
            return aiomqtt.Client(
                self.config.host,
                self.config.port,
                username=self.config.username,
                password=self.config.resolve_password(),  # read per attempt: a rotated secret is picked up
                identifier=self.config.effective_client_id,
                keepalive=self.config.keepalive,
                will=aiomqtt.Will(self.topics.status, "offline", qos=self.config.qos, retain=True),
                clean_session=not self.config.persistent_session,
                tls_context=tls_context(self.config),
                tls_insecure=self.config.tls_insecure if self.config.uses_tls else None,
            )
        except (ConfigError, OSError, ValueError) as exc:
            raise aiomqtt.MqttError(str(exc)) from exc  # e.g. an unreadable CA file: retried, logged

    async def _serve(
        self, client: aiomqtt.Client, on_message: MessageHandler | None, on_ready: Callable[[], None] | None
    ) -> None:
        qos = self.config.qos
        await client.subscribe([(topic, qos) for topic in self.subscriptions])
        await client.publish(self.topics.status, "online", qos=qos, retain=True)
        self.connected = True
        self._overflow_logged = False
        # The retained state may have been lost with a broker restart: publish it again.
        self._drop_queued(self.topics.speaking)
        self._enqueue(_Outgoing(self.topics.speaking, "ON" if self._speaking else "OFF", retain=True))
        _LOGGER.info(
            "MQTT connected to %s:%d as %s (%s session), listening on %s",
            self.config.host,
            self.config.port,
            self.config.effective_client_id,
            "persistent" if self.config.persistent_session else "clean",
            ", ".join(self.subscriptions),
        )
        _call_each(self.on_connected)
        if on_ready is not None and not self._ready_fired:
            self._ready_fired = True
            on_ready()
        reader = asyncio.create_task(self._read(client, on_message), name="chatterd.mqtt.read")
        # The writer is never cancelled mid-publish on a live connection (Python < 3.12's wait_for,
        # inside aiomqtt's publish, can swallow a cancellation); after stop() it flushes and returns.
        writer = asyncio.create_task(self._write(client), name="chatterd.mqtt.write")
        try:
            done, _ = await asyncio.wait({reader, writer}, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                error = task.exception()
                if error is not None:
                    raise error  # an MqttError from read or write: reconnect
        finally:
            await _cancel_all((reader, writer))
        # The writer returned: stop() was called and the outbox is empty.
        await client.publish(self.topics.status, "offline", qos=qos, retain=True, timeout=FLUSH_TIMEOUT_S)

    async def _read(self, client: aiomqtt.Client, on_message: MessageHandler | None) -> None:
        async for message in client.messages:
            received_at = time.monotonic()
            payload = message.payload
            if isinstance(payload, (bytes, bytearray)):
                data = bytes(payload)
            else:
                data = b"" if payload is None else str(payload).encode()
            self.dispatch(message.topic.value, data, received_at)
            if on_message is not None:
                try:
                    on_message(message.topic.value, data, received_at)
                except Exception:  # a handler bug must not take the connection down
                    _LOGGER.exception("handling a message on %s failed", message.topic.value)
        raise aiomqtt.MqttError("message stream ended")

    async def _write(self, client: aiomqtt.Client) -> None:
        """Publish the outbox as it fills; once stop() was called, return as soon as it is empty."""
        while True:
            while self._outbox:
                await self._send(client, self._outbox[0])
            if self._stopping.is_set():
                return
            self._outbox_ready.clear()
            await self._outbox_ready.wait()

    async def _send(self, client: aiomqtt.Client, outgoing: _Outgoing) -> None:
        await client.publish(outgoing.topic, outgoing.payload, qos=self.config.qos, retain=outgoing.retain)
        # Removed only once acknowledged: an entry cut off by a disconnect goes out after the reconnect.
        if self._outbox and self._outbox[0] is outgoing:
            self._outbox.popleft()


def _call_each(callbacks: list[Callable[..., None]], *args: str) -> None:
    """Run integration callbacks; a failing one is logged and must not take the connection down."""
    for callback in callbacks:
        try:
            callback(*args)
        except Exception:
            _LOGGER.exception("MQTT callback %r failed", callback)


def tls_context(config: MqttConfig) -> ssl.SSLContext | None:
    """The TLS context `config` asks for (None without TLS); raises OSError/SSLError on bad files."""
    if not config.uses_tls:
        return None
    context = ssl.create_default_context(cafile=config.tls_ca_file)
    if config.tls_cert_file is not None and config.tls_key_file is not None:
        context.load_cert_chain(config.tls_cert_file, config.tls_key_file)
    if config.tls_insecure:
        context.check_hostname = False  # the chain is still verified
    return context


def describe_error(exc: aiomqtt.MqttError) -> str:
    """One line for the log: what went wrong and, for refused logins, what to check."""
    rc = getattr(exc, "rc", None)
    value = getattr(rc, "value", rc)
    if isinstance(value, int) and value in _AUTH_HINTS:
        return f"{_AUTH_HINTS[value]} ({exc})"
    if isinstance(exc.__cause__, ConnectionRefusedError) or "Connection refused" in str(exc):
        return f"{exc}: no MQTT broker is listening there ({NO_BROKER_HINT})"
    return str(exc)


NO_BROKER_HINT = (
    "start one, e.g. on Debian: apt-get install mosquitto && systemctl enable --now mosquitto; "
    "or point mqtt.host / mqtt.port at yours"
)


async def _cancel_all(tasks: tuple[asyncio.Task[None], ...]) -> None:
    """Cancel and reap tasks without ever hanging on one that swallowed its cancellation."""
    for task in tasks:
        task.cancel()
    done, pending = await asyncio.wait(tasks, timeout=1.0)
    for task in pending:
        task.cancel()  # asyncio.wait_for in Python < 3.12 can eat a cancel; one more is enough
    for task in done:
        if not task.cancelled():
            task.exception()  # retrieved: no "exception was never retrieved" noise
