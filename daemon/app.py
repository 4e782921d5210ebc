"""Wiring: config → engine → player → speech service → MQTT, and the daemon's lifecycle.

`serve(config)` is `chatterd run`: open the audio output (fail fast), load and warm up the engine,
then `run` until SIGTERM/SIGINT. `run(config, engine)` is the asyncio part, usable in-process
(tests pass a fake engine and a `wav:` output).

Shutdown order matters: the speech worker is cancelled first (the audio stops, every open request
gets `stopped`), then the MQTT link flushes those events, publishes `speaking OFF` and retained
`offline`, and disconnects; the player closes last.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys

from daemon import systemd
from daemon.config import Config, LogConfig, SpeechConfig
from daemon.errors import BadRequest
from daemon.messages import error_event, parse_say, parse_stop, parse_volume, request_id_of
from daemon.mqtt import MqttLink, Topics
from daemon.player import Player, Sink, open_sink
from daemon.speech import EmitFn, SpeechEngine, SpeechService

_LOGGER = logging.getLogger("daemon")

# The sink is opened before the engine to fail fast on a bad device; Chatterbox's rate is 24 kHz.
# Should the engine report another rate, the sink is reopened at that rate.
EXPECTED_SAMPLE_RATE = 24000
MQTT_STOP_TIMEOUT_S = 10.0


def setup_logging(config: LogConfig) -> None:
    # journald stamps every line itself; by hand, a timestamp helps.
    stamp = "" if os.environ.get("JOURNAL_STREAM") else "%(asctime)s "
    logging.basicConfig(
        level=config.level.upper(), format=stamp + "%(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )


class Router:
    """Turns incoming MQTT messages into service calls; bad input becomes an `error` event."""

    def __init__(
        self, topics: Topics, service: SpeechService, player: Player, limits: SpeechConfig, emit: EmitFn
    ) -> None:
        self._topics = topics
        self._service = service
        self._player = player
        self._limits = limits
        self._emit = emit

    def handle(self, topic: str, payload: bytes, received_at: float) -> None:
        try:
            if topic == self._topics.say:
                self._service.submit(parse_say(payload, received_at, self._limits))
            elif topic == self._topics.stop:
                request_id = parse_stop(payload, self._limits)
                if request_id is None:
                    self._service.stop_all()
                else:
                    self._service.stop(request_id)
            elif topic == self._topics.volume_set:
                self._player.volume = parse_volume(payload, self._limits)
                _LOGGER.info("master volume set to %.2f", self._player.volume)
            else:
                _LOGGER.debug("ignoring a message on %s", topic)
        except BadRequest as exc:
            request_id = request_id_of(payload)
            _LOGGER.warning("bad message on %s (id %s): %s: %s", topic, request_id, exc.code, exc.message)
            self._emit(error_event(request_id, exc.code, exc.message, topic=topic))


async def run(config: Config, engine: SpeechEngine, sink: Sink | None = None) -> None:
    """Serve MQTT requests with `engine` until cancelled; `sink` defaults to `audio.output`."""
    if sink is None:
        sink = open_sink(config.audio, engine.sample_rate)
    player = Player(sink, volume=config.audio.volume)
    player.start()
    link = MqttLink(config.mqtt)
    service = SpeechService(
        engine, player, config.speech, emit=link.publish_event, on_speaking=link.publish_speaking
    )
    router = Router(link.topics, service, player, config.speech, emit=link.publish_event)

    def on_ready() -> None:
        _LOGGER.info(
            "ready: speaking requests from %s (voices: %s)", link.topics.say, ", ".join(engine.voices)
        )
        systemd.notify("READY=1", f"STATUS=ready on {link.topics.base}")

    tasks = [
        asyncio.create_task(service.run(), name="chatterd.speech"),
        asyncio.create_task(link.run(router.handle, on_ready), name="chatterd.mqtt"),
    ]
    interval = systemd.watchdog_interval()
    if interval is not None:
        tasks.append(asyncio.create_task(systemd.watchdog(interval), name="chatterd.watchdog"))
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            task.result()  # a crashed task takes the daemon down with its traceback
        raise RuntimeError(f"{next(iter(done)).get_name()} ended unexpectedly")
    finally:
        systemd.notify("STOPPING=1")
        await _shutdown(tasks, link, player)


async def _shutdown(tasks: list[asyncio.Task[None]], link: MqttLink, player: Player) -> None:
    speech, mqtt, *others = tasks
    for task in (speech, *others):
        task.cancel()
    await asyncio.gather(speech, *others, return_exceptions=True)  # `stopped` events are in the outbox now
    link.stop()
    try:
        await asyncio.wait_for(mqtt, MQTT_STOP_TIMEOUT_S)
    except asyncio.TimeoutError:
        _LOGGER.warning("MQTT did not shut down within %.0f s", MQTT_STOP_TIMEOUT_S)
    except Exception as exc:
        _LOGGER.debug("MQTT task ended with %r", exc)
    await asyncio.to_thread(player.close)
    _LOGGER.info("stopped")


async def _main(config: Config, engine: SpeechEngine, sink: Sink) -> None:
    """`run` with SIGTERM/SIGINT cancelling it, as systemd and Ctrl-C expect."""
    main_task = asyncio.current_task()
    assert main_task is not None
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, main_task.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        await run(config, engine, sink)


def serve(config: Config) -> None:
    """`chatterd run`: audio first (fail fast), then the engine (slow), then serve until a signal."""
    sink = open_sink(config.audio, EXPECTED_SAMPLE_RATE)
    try:
        from tts.engine import StreamingTTS  # torch is imported here, not at daemon import time

        systemd.notify("STATUS=loading the model")
        _LOGGER.info("loading the TTS engine from %s", config.tts.checkpoint)
        engine = StreamingTTS.load(config.tts)
        systemd.notify("STATUS=warming up")
        engine.warm_up()
        if engine.sample_rate != sink.sample_rate:
            sink.close()
            sink = open_sink(config.audio, engine.sample_rate)
    except BaseException:
        sink.close()
        raise
    asyncio.run(_main(config, engine, sink))
