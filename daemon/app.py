"""Composition: config → engine → player → speech service → front-ends, and the daemon's lifecycle.

The front-ends (the MQTT command topics, voice/volume controls, Hermes, Home Assistant discovery,
Wyoming) are built here and their MQTT routes registered on the link; every event the speech
service emits is fanned out to MQTT `<base>/event`, Hermes and Wyoming (`emit`).

`serve(config)` is `chatterd run`: open the audio output (fail fast), load and warm up the engine,
then `run` until SIGTERM/SIGINT. `run(config, engine)` is the asyncio part, usable in-process
(tests pass a fake engine and a `wav:` output, and may hold back MQTT reconnects with their own
`reconnect_sleep`).

systemd (Type=notify): `STATUS=` follows the phases (loading, warming up, connecting, ready,
reconnecting); each slow start phase first sends `EXTEND_TIMEOUT_USEC` with its own budget, so
a first compile gets its time and a hang still fails the start; `READY=1` goes out once, after
warm-up and the first MQTT subscription; `WATCHDOG=1` is sent from the event loop.

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
from collections.abc import Awaitable, Callable
from pathlib import Path

from daemon import systemd
from daemon.commands import Router
from daemon.config import Config, LogConfig
from daemon.controls import Controls
from daemon.engine import EngineThread, SpeechEngine, WarmableEngine
from daemon.events import OutEvent
from daemon.hermes import HermesBridge
from daemon.homeassistant import HomeAssistantDiscovery
from daemon.loudness import Leveller
from daemon.mqtt import MqttLink
from daemon.phrase_cache import PhraseCache
from daemon.player import Player, Sink, open_sink
from daemon.speech import SpeechService
from tts.config import TTSConfig

_LOGGER = logging.getLogger("daemon")

# The sink is opened before the engine to fail fast on a bad device; Chatterbox's rate is 24 kHz.
# Should the engine report another rate, the sink is reopened at that rate.
EXPECTED_SAMPLE_RATE = 24000
MQTT_STOP_TIMEOUT_S = 10.0
# Start-phase budgets announced to systemd (EXTEND_TIMEOUT_USEC); the unit's TimeoutStartSec
# bounds the whole start on top. Compiling every decode shape on a CPU takes tens of minutes.
LOAD_BUDGET_S = 600.0
WARM_UP_BUDGET_S = 600.0
COMPILE_WARM_UP_BUDGET_S = 3600.0


def report_warm_up(done: int, total: int, what: str) -> None:
    """Warm-up progress for a person watching: a log line and systemd's STATUS= per graph."""
    _LOGGER.info("warm-up: graph %d of %d (%s)", done, total, what)
    systemd.notify(f"STATUS=warming up: {done}/{total}")


EngineLoader = Callable[[TTSConfig], WarmableEngine]


def setup_logging(config: LogConfig) -> None:
    # journald stamps every line itself; by hand, a timestamp helps.
    stamp = "" if os.environ.get("JOURNAL_STREAM") else "%(asctime)s "
    logging.basicConfig(
        level=config.level.upper(), format=stamp + "%(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )


def _phrase_cache(config: Config, engine: SpeechEngine) -> PhraseCache | None:
    if config.speech.cache.dir is None:
        return None
    directory = Path(config.speech.cache.dir)
    return PhraseCache(directory, int(config.speech.cache.max_mb * 1e6), engine.sample_rate, engine.identity())


async def run(
    config: Config,
    engine: SpeechEngine,
    sink: Sink | None = None,
    *,
    reconnect_sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    engine_thread: EngineThread | None = None,
) -> None:
    """Serve requests with `engine` until cancelled; `sink` defaults to `audio.output`;
    `reconnect_sleep` waits out each MQTT reconnect backoff; `engine_thread`: the thread that
    loaded the engine, to synthesise on (a new one if None)."""
    if sink is None:
        sink = open_sink(config.audio, engine.sample_rate)
    player = Player(sink, volume=config.audio.volume)
    player.start()
    link = MqttLink(config.mqtt, sleep=reconnect_sleep)
    listeners: list[Callable[[OutEvent], None]] = [link.publish_event]

    def emit(event: OutEvent) -> None:
        for listener in listeners:
            listener(event)

    service = SpeechService(
        engine,
        player,
        config.speech,
        emit=emit,
        on_speaking=link.publish_speaking,
        default_voice=config.tts.default_voice,
        cache=_phrase_cache(config, engine),
        leveller=Leveller(config.audio.target_dbfs, config.audio.max_gain_db, engine.sample_rate)
        if config.audio.max_gain_db > 0
        else None,
        engine_thread=engine_thread,
    )
    router = Router(link.topics, service, player, config.speech, emit=emit)
    controls = Controls(link, service, player, engine.voices, emit)
    link.add_routes(router.routes())
    link.add_routes(controls.routes())  # after the Router's: a volume is set before it is published
    link.on_connected.append(controls.publish_state)
    integrations = config.integrations
    if integrations.hermes.enabled:
        site_id = integrations.hermes.site_id or config.mqtt.site
        hermes = HermesBridge(link, site_id, service.submit, config.speech, emit)
        link.add_routes(hermes.routes())
        listeners.append(hermes.on_event)
    discovery = HomeAssistantDiscovery(integrations.home_assistant, link, engine.voices)
    link.add_routes(discovery.routes())
    link.on_connected.append(discovery.on_connected)
    wyoming = None
    if integrations.wyoming.enabled:
        from daemon.wyoming import WyomingServer  # the wyoming package is only needed when enabled

        wyoming = WyomingServer(integrations.wyoming, service, engine, config.speech, config.mqtt.site)
        listeners.append(wyoming.on_event)

    def on_ready() -> None:
        _LOGGER.info(
            "ready: speaking requests from %s (voices: %s)", link.topics.say, ", ".join(engine.voices)
        )
        systemd.notify("READY=1", f"STATUS=ready on {link.topics.base}")

    def on_connected() -> None:
        systemd.notify(f"STATUS=ready on {link.topics.base}")

    def on_offline(reason: str) -> None:
        systemd.notify(f"STATUS=reconnecting: {reason}")

    link.on_connected.append(on_connected)
    link.on_offline.append(on_offline)
    systemd.notify(f"STATUS=connecting to MQTT broker {config.mqtt.host}:{config.mqtt.port}")

    tasks = [
        asyncio.create_task(service.run(), name="chatterd.speech"),
        asyncio.create_task(link.run(on_ready=on_ready), name="chatterd.mqtt"),
    ]
    if wyoming is not None:
        tasks.append(asyncio.create_task(wyoming.run(), name="chatterd.wyoming"))
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
    speech.cancel()
    await asyncio.gather(speech, return_exceptions=True)  # `stopped` events are in the outbox now
    for task in others:  # Wyoming after the worker: its clients hear their requests' ends first
        task.cancel()
    await asyncio.gather(*others, return_exceptions=True)
    link.stop()
    try:
        await asyncio.wait_for(mqtt, MQTT_STOP_TIMEOUT_S)
    except asyncio.TimeoutError:
        _LOGGER.warning("MQTT did not shut down within %.0f s", MQTT_STOP_TIMEOUT_S)
    except Exception as exc:
        _LOGGER.debug("MQTT task ended with %r", exc)
    await asyncio.to_thread(player.close)
    _LOGGER.info("stopped")


async def _main(config: Config, engine: SpeechEngine, sink: Sink, engine_thread: EngineThread) -> None:
    """`run` with SIGTERM/SIGINT cancelling it, as systemd and Ctrl-C expect."""
    main_task = asyncio.current_task()
    assert main_task is not None
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, main_task.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        await run(config, engine, sink, engine_thread=engine_thread)


def load_streaming_tts(config: TTSConfig) -> WarmableEngine:
    """The real engine (torch is imported here, not at daemon import time)."""
    from tts.engine import StreamingTTS

    return StreamingTTS.load(config)


def start_engine(config: TTSConfig, engine_thread: EngineThread,
                 load_engine: EngineLoader = load_streaming_tts) -> WarmableEngine:
    """Load and warm up the engine on `engine_thread`, the thread that will synthesise with it."""
    _LOGGER.info("loading the %s model from %s", config.model, config.checkpoint or "its Hugging Face repository")
    engine = engine_thread.call(load_engine, config)
    budget = COMPILE_WARM_UP_BUDGET_S if config.compile else WARM_UP_BUDGET_S
    systemd.notify(
        f"EXTEND_TIMEOUT_USEC={int(budget * 1e6)}",
        "STATUS=warming up" + (" (compiling: minutes on a CPU)" if config.compile else ""),
    )
    engine_thread.call(engine.warm_up, report_warm_up)
    engine_thread.call(engine.identity)  # reads the voices' tensors; cached, so the loop never computes it
    return engine


def serve(config: Config, load_engine: EngineLoader = load_streaming_tts) -> None:
    """`chatterd run`: audio first (fail fast), then the engine (slow), then serve until a signal."""
    sink = open_sink(config.audio, EXPECTED_SAMPLE_RATE)
    engine_thread = EngineThread()
    try:
        systemd.notify(f"EXTEND_TIMEOUT_USEC={int(LOAD_BUDGET_S * 1e6)}", "STATUS=loading the model")
        engine = start_engine(config.tts, engine_thread, load_engine)
        if engine.sample_rate != sink.sample_rate:
            sink.close()
            sink = open_sink(config.audio, engine.sample_rate)
    except BaseException:
        sink.close()
        engine_thread.shutdown()
        raise
    asyncio.run(_main(config, engine, sink, engine_thread))
