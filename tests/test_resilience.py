"""Months unattended: broker restarts, audio and engine faults, a load burst, auth and TLS.

The daemon runs in-process (`app.run`) with the fake engine against real mosquitto brokers; the
audio-fault test plays through real PortAudio/ALSA into a FIFO that goes away mid-stream.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import (
    ASOUNDRC,
    CAPTURE_RATE,
    Broker,
    free_port,
    give_to_broker,
    read_raw_int16,
    require_tool,
)
from fakes import FakeEngine, FaultyEngine, PacedSink
from harness import BASE, SITE, TIMEOUT, collecting, listening, make_config, online_at, publish, running

from daemon import player
from daemon.config import MqttConfig
from daemon.events import END_EVENTS
from daemon.mqtt import MqttLink
from daemon.player import PyAudioSink, WavSink

# --- broker restart ---------------------------------------------------------------------------


async def test_broker_restart_mid_speech_loses_and_repeats_nothing(
    tmp_path: Path, broker_state_dir: Path
) -> None:
    broker = Broker(tmp_path, persistence=True, state_dir=broker_state_dir)
    broker.start()
    engine = FakeEngine(delay_s=0.005)
    sink = PacedSink(engine.sample_rate, pace=1.0)  # real time: the speech outlasts the outage
    config = make_config(broker, tmp_path)
    come_back = asyncio.Event()

    async def held_back(seconds: float) -> None:  # the daemon reconnects once the test lets it
        await come_back.wait()

    try:
        async with collecting(broker) as collector, running(config, engine, sink, reconnect_sleep=held_back):
            await collector.until(lambda: bool(online_at(collector)))
            long_text = " ".join(["word"] * 40)  # 2 s of audio
            await publish(broker, [("say", json.dumps({"text": long_text, "id": "long"}))])
            await collector.until(lambda: any(e["event"] == "started" for e in collector.events()))
            broker.stop()  # mid-speech
            assert not collector.ends("long")
            await asyncio.sleep(0.3)
            broker.start()
            after = [f"after {i} restart" for i in range(5)]
            await publish(broker, [("say", json.dumps({"text": t, "id": f"after-{i}"})) for i, t in enumerate(after)])
            published_at = time.monotonic()
            come_back.set()
            for request_id in ["long"] + [f"after-{i}" for i in range(5)]:
                assert (await collector.end_of(request_id))["event"] == "finished"
            # The daemon came back after those were published: the broker queued them in its session.
            reconnects = [at for at, retain in online_at(collector) if not retain]
            assert reconnects and reconnects[-1] > published_at
            # Playing went on through the outage: the long request is complete.
            finished = collector.ends("long")[0]
            assert finished["audio_s"] == pytest.approx(40 * engine.chunk_s, abs=1e-3)
            # A say the broker delivered twice (QoS 1 redelivery) reaches the daemon before this one.
            await collector.barrier()
            counts = Counter(engine.calls)
            assert all(counts[text] == 1 for text in after), counts
            for request_id in ["long"] + [f"after-{i}" for i in range(5)]:
                assert collector.names(request_id) == ["queued", "started", "finished"], request_id
            # The retained state was published again after the reconnect, and it is right.
            speaking = [(r.payload, r.at) for r in collector.received if r.topic == f"{BASE}/speaking"]
            assert any(at > reconnects[-1] for _, at in speaking) and speaking[-1][0] == b"OFF"
    finally:
        broker.stop()


async def test_after_a_reconnect_to_a_fresh_broker_subscriptions_and_retained_state_are_redone(
    mosquitto: Broker,
) -> None:
    """A broker restarted without persistence forgot everything: the link subscribes again and
    its on_connected callbacks (integrations: discovery) publish their retained state again."""
    link = MqttLink(MqttConfig(host=mosquitto.host, port=mosquitto.port, site=SITE, reconnect_min_s=0.2))

    def announce() -> None:
        link.publish(f"{BASE}/announced", "config", retain=True)

    def broken() -> None:
        raise RuntimeError("an integration bug")

    link.on_connected += [broken, announce]
    connects: asyncio.Queue[None] = asyncio.Queue()
    link.on_connected.append(lambda: connects.put_nowait(None))
    said: asyncio.Queue[bytes] = asyncio.Queue()

    def on_message(topic: str, payload: bytes, received_at: float) -> None:
        if topic == f"{BASE}/say":
            said.put_nowait(payload)

    task = asyncio.create_task(link.run(on_message))
    try:
        for round_ in range(2):
            await asyncio.wait_for(connects.get(), TIMEOUT)
            async with listening(mosquitto, f"{BASE}/#") as late:
                # Retained: the link's (re)publication, on a broker that had forgotten everything.
                retained = await late.wait_for(lambda r: r.retain)
                assert retained.topic in (f"{BASE}/announced", f"{BASE}/status", f"{BASE}/speaking")
                await late.publish("say", f"round {round_}")
            assert await asyncio.wait_for(said.get(), TIMEOUT) == f"round {round_}".encode()
            if round_ == 0:
                mosquitto.stop()
                mosquitto.start()
        async with listening(mosquitto, f"{BASE}/announced") as late:
            await late.wait_for(lambda r: r.payload == b"config")
    finally:
        link.stop()
        await asyncio.wait_for(task, TIMEOUT)


# --- audio device faults ----------------------------------------------------------------------


class VanishingDevice:
    """An ALSA `file` PCM writing into a FIFO that is read for `keep_bytes`, then disappears.

    The FIFO's path becomes a directory (the device cannot be reopened) until `come_back()`,
    after which the ALSA plugin creates a regular file there: the device works again.
    """

    def __init__(self, root: Path, keep_bytes: int) -> None:
        self.path = root / "speaker"
        os.mkfifo(self.path)
        self.keep_bytes = keep_bytes
        self.read = 0
        self.gone = threading.Event()
        self._thread = threading.Thread(target=self._reader, daemon=True)
        self._thread.start()

    def _reader(self) -> None:
        with open(self.path, "rb") as fifo:
            while self.read < self.keep_bytes:
                data = fifo.read(4096)
                if not data:
                    break
                self.read += len(data)
            self.path.unlink()
            self.path.mkdir()
        self.gone.set()  # the reader end is closed: the next write fails with EPIPE

    def come_back(self) -> None:
        self.path.rmdir()

    def samples(self) -> np.ndarray[Any, np.dtype[np.int16]]:
        return read_raw_int16(self.path)


class FakeClock:
    """A monotonic clock that moves only when the test sets `now` (read from the player thread)."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def test_audio_device_vanishing_mid_stream_is_reported_and_reopened_with_backoff(
    tmp_path: Path, mosquitto: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    config_home = tmp_path / "xdg"
    (config_home / "alsa").mkdir(parents=True)
    device = VanishingDevice(tmp_path, keep_bytes=CAPTURE_RATE * 2 // 4)  # 0.25 s, then it is gone
    (config_home / "alsa" / "asoundrc").write_text(ASOUNDRC.format(rate=CAPTURE_RATE, path=device.path))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(config_home))
    engine = FakeEngine()
    clock = FakeClock()  # the backoff's time: it moves only below, so every delay is exact
    sink = await asyncio.to_thread(PyAudioSink, engine.sample_rate, clock=clock)

    async def say(request_id: str, text: str) -> dict[str, Any]:
        await publish(mosquitto, [("say", json.dumps({"text": text, "id": request_id}))])
        return await collector.end_of(request_id)

    def backing_off(seconds: float) -> str:
        return f"the next attempt to reopen it is in {seconds:.1f} s"

    first, second = player.REOPEN_MIN_S, 2 * player.REOPEN_MIN_S
    async with collecting(mosquitto) as collector, running(make_config(mosquitto, tmp_path), engine, sink):
        await collector.until(lambda: bool(online_at(collector)))
        failed_at = clock.now
        error = await say("cut-off", "w " * 40)
        assert (error["event"], error["code"]) == ("error", "audio_failed")
        assert device.gone.is_set() and "writing to audio device" in error["message"]
        # Within the backoff a request fails at once, without touching the device.
        error = await say("gone-1", "nobody hears this")
        assert error["code"] == "audio_failed" and backing_off(first) in error["message"], error
        # The backoff has passed, to the tick: a real attempt, which fails too (the device is still gone) ...
        clock.now = failed_at + first
        error = await say("gone-2", "nor this")
        assert error["code"] == "audio_failed" and "next attempt" not in error["message"], error
        device.come_back()
        # ... and doubles the backoff: the device is not tried until `second` after that attempt.
        error = await say("gone-3", "too soon")
        assert error["code"] == "audio_failed" and backing_off(second) in error["message"], error
        clock.now = failed_at + first + second - 0.01
        error = await say("gone-4", "still too soon")
        assert error["code"] == "audio_failed" and backing_off(0.01) in error["message"], error
        clock.now = failed_at + first + second
        assert (await say("back", "back again now"))["event"] == "finished"
    # The reopened device got exactly the last request's audio (the ALSA plugin truncates on open).
    samples = device.samples()
    assert len(samples) >= engine.expected_samples("back again now")
    assert np.abs(samples).max() > 1000  # sound, not silence
    assert engine.calls[-1] == "back again now"


# --- engine faults ----------------------------------------------------------------------------


class OutOfMemoryError(RuntimeError):
    """Named like torch's (torch.OutOfMemoryError), which the daemon recognises without torch."""


@pytest.mark.parametrize(
    ("fault", "code"),
    [
        (MemoryError("cannot allocate 2 GiB"), "out_of_memory"),
        (OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 MiB"), "out_of_memory"),
        (RuntimeError("shape mismatch in the vocoder"), "synthesis_failed"),
    ],
)
async def test_engine_fault_fails_one_request_and_the_next_one_works(
    tmp_path: Path, mosquitto: Broker, fault: BaseException, code: str
) -> None:
    inner = FakeEngine()
    engine = FaultyEngine(inner, marker="poison", fault=fault, after_chunks=2)
    sink = WavSink(tmp_path / "out.wav", inner.sample_rate)
    async with collecting(mosquitto) as collector, running(make_config(mosquitto, tmp_path), engine, sink):
        await collector.until(lambda: bool(online_at(collector)))
        await publish(
            mosquitto,
            [
                ("say", json.dumps({"text": "poison one two three four", "id": "bad"})),
                ("say", json.dumps({"text": "healthy words here", "id": "good"})),
            ],
        )
        error = await collector.end_of("bad")
        assert (error["event"], error["code"]) == ("error", code)
        assert str(fault) in error["message"]
        assert (await collector.end_of("good"))["event"] == "finished"
    assert engine.injected == 1
    assert inner.yielded[0] == 2  # the failed stream was closed, not run to its end
    assert inner.calls[-1] == "healthy words here"


@pytest.mark.model
async def test_real_engine_recovers_from_an_injected_out_of_memory(engine: Any, tmp_path: Path) -> None:
    """The real engine's generator is closed mid-request; its lock and buffers are released."""
    from daemon.config import SpeechConfig
    from daemon.events import Event
    from daemon.messages import SayRequest
    from daemon.player import Player
    from daemon.speech import SpeechService

    faulty = FaultyEngine(engine, marker="Poison", fault=MemoryError("simulated"), after_chunks=1)
    events: list[Event] = []
    sink = WavSink(tmp_path / "out.wav", engine.sample_rate)
    speaker = Player(sink)
    speaker.start()
    service = SpeechService(faulty, speaker, SpeechConfig(), events.append)
    task = asyncio.create_task(service.run())
    try:
        service.submit(SayRequest(text="Poison in this sentence.", id="bad", received_at=time.monotonic()))
        service.submit(SayRequest(text="Fine again.", id="good", received_at=time.monotonic()))
        deadline = time.monotonic() + 300
        while not any(e.id == "good" and e.is_end for e in events):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        speaker.close()
    ends = {e.id: e for e in events if e.is_end}
    assert ends["bad"].extras["code"] == "out_of_memory"
    assert ends["good"].event == "finished" and ends["good"].extras["audio_s"] > 0


# --- load ---------------------------------------------------------------------------------------


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


async def test_burst_of_500_from_several_clients_each_ends_exactly_once_and_stop_stays_prompt(
    tmp_path: Path, mosquitto: Broker
) -> None:
    engine = FakeEngine(delay_s=0.001)
    sink = PacedSink(engine.sample_rate, pace=1.0)  # 0.1 s per request: a backlog builds up
    config = make_config(mosquitto, tmp_path, queue_size=32, rate_limit_per_s=5.0, rate_limit_burst=40)
    clients = [f"client-{k}" for k in range(5)]
    ids = [f"{c}-{i}" for c in clients for i in range(100)]
    async with collecting(mosquitto) as collector, running(config, engine, sink):
        await collector.until(lambda: bool(online_at(collector)))
        rss_before = _rss_mb()

        async def flood(client: str) -> None:
            messages = [
                ("say", json.dumps({"text": f"message {i}", "id": f"{client}-{i}", "client": client}))
                for i in range(100)
            ]
            await publish(mosquitto, messages)

        await asyncio.gather(*(flood(c) for c in clients))
        await collector.until(lambda: any(e["event"] == "started" for e in collector.events()))
        stop_sent = time.monotonic()
        await publish(mosquitto, [("stop", b"")])
        # The daemon handled the stop before this: every queued request has its end already, and only
        # the one being spoken may still be cutting its audio.
        await collector.barrier()
        after_stop = len(collector.events())
        seen: set[str] = set()

        def all_ended() -> bool:
            seen.update(e["id"] for e in collector.events() if e["event"] in END_EVENTS)
            return seen.issuperset(ids)

        await collector.until(all_ended, timeout=30)
        stop_took = time.monotonic() - stop_sent
        late = collector.events()[after_stop:]
        assert len({e["id"] for e in late}) <= 1 and sum(e["event"] in END_EVENTS for e in late) <= 1, late
        rss_growth = _rss_mb() - rss_before
        await publish(mosquitto, [("say", json.dumps({"text": "still here", "id": "after-burst"}))])
        assert (await collector.end_of("after-burst"))["event"] == "finished"
    ends = Counter(e["id"] for e in collector.events() if e["event"] in END_EVENTS)
    assert all(ends[i] == 1 for i in ids), [i for i in ids if ends[i] != 1][:10]
    burst = set(ids)
    outcomes = Counter(
        (e["event"], e.get("code") or e.get("reason"))
        for e in collector.events()
        if e["id"] in burst and e["event"] in END_EVENTS
    )
    # 40 per client at once, then 5/s: most of the burst is refused; of the rest, the queue holds 32.
    assert 200 <= outcomes[("error", "rate_limited")] <= 300, outcomes
    assert outcomes[("dropped", "queue_full")] > 0 and outcomes[("stopped", "stop")] > 0, outcomes
    print(f"\nburst of {len(ids)}: every request ended {stop_took:.2f} s after the stop was sent")
    assert rss_growth < 100, rss_growth


# --- auth and TLS -------------------------------------------------------------------------------

PASSWORD = "s3cret-Pa55word-xyzzy"


@dataclass
class SecureBroker:
    broker: Broker
    tls_port: int
    ca_file: Path


@pytest.fixture
def secure_broker(tmp_path: Path, broker_state_dir: Path) -> Any:
    for tool, package in (("mosquitto", "mosquitto"), ("mosquitto_passwd", "mosquitto"), ("openssl", "openssl")):
        require_tool(tool, package)
    passwd = broker_state_dir / "passwd"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(passwd), "chatterd", PASSWORD], check=True)
    cert, key = broker_state_dir / "cert.pem", broker_state_dir / "key.pem"
    # Self-signed, and named for a host the tests do not connect to: the chain verifies against
    # the cert itself, the host name check fails unless tls_insecure is set.
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "2", "-subj", "/CN=broker.test", "-addext", "subjectAltName=DNS:broker.test"],
        check=True, capture_output=True,
    )
    for path in (passwd, cert, key):
        give_to_broker(path)
    tls_port = free_port()
    extra = (
        f"allow_anonymous false\npassword_file {passwd}\n"
        f"listener {tls_port} 127.0.0.1\ncertfile {cert}\nkeyfile {key}\n"
    )
    broker = Broker(tmp_path, extra_config=extra, state_dir=broker_state_dir)
    broker.start()
    try:
        yield SecureBroker(broker, tls_port, cert)
    finally:
        broker.stop()


async def _first_connection(config: MqttConfig, timeout: float = 10.0) -> str:
    """'connected', or the reason of the first failed attempt."""
    link = MqttLink(config)
    outcome: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    link.on_offline.append(lambda reason: outcome.done() or outcome.set_result(reason))
    task = asyncio.create_task(link.run(lambda *_: None, lambda: outcome.done() or outcome.set_result("connected")))
    try:
        return await asyncio.wait_for(outcome, timeout)
    finally:
        link.stop()
        await asyncio.wait_for(task, timeout)


async def test_right_credentials_over_tls_connect_and_speak(
    secure_broker: SecureBroker, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.DEBUG)
    secret = tmp_path / "mqtt-password"
    secret.write_text(PASSWORD + "\n")
    broker = secure_broker.broker
    tls = {"port": secure_broker.tls_port, "tls_ca_file": str(secure_broker.ca_file), "tls_insecure": True,
           "username": "chatterd"}
    config = make_config(broker, tmp_path, {**tls, "password_file": str(secret)})
    engine = FakeEngine()
    collector_auth = {"username": "chatterd", "password": PASSWORD}
    async with running(config, engine, WavSink(tmp_path / "o.wav", engine.sample_rate)), \
            listening(broker, f"{BASE}/#", **collector_auth) as ear:
        await ear.wait_for(lambda r: r.topic == f"{BASE}/status" and r.payload == b"online")
        await ear.say("over tls", "tls-1")
        assert (await ear.end_of("tls-1"))["event"] == "finished"
        assert not [r for r in ear.received if PASSWORD.encode() in r.payload]
    # The same through an environment variable.
    monkeypatch.setenv("CHATTERD_TEST_MQTT_PASSWORD", PASSWORD)
    env_config = make_config(broker, tmp_path, {**tls, "password_env": "CHATTERD_TEST_MQTT_PASSWORD"})
    assert await _first_connection(env_config.mqtt) == "connected"
    assert PASSWORD not in caplog.text
    assert PASSWORD not in repr(config)


async def test_wrong_credentials_and_unverifiable_tls_fail_with_clear_messages(
    secure_broker: SecureBroker, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    broker = secure_broker.broker
    wrong = "not-the-" + PASSWORD
    base = {"host": broker.host, "site": SITE, "reconnect_min_s": 5.0, "reconnect_max_s": 5.0}
    reason = await _first_connection(MqttConfig(port=broker.port, username="chatterd", password=wrong, **base))
    assert "rejected the user name or password" in reason or "refused access" in reason
    assert "check mqtt.username and the password" in reason or "check mqtt.username, the password" in reason
    reason = await _first_connection(MqttConfig(port=broker.port, **base))  # anonymous
    assert "refused access" in reason or "rejected the user name" in reason
    tls = {"port": secure_broker.tls_port, "tls_ca_file": str(secure_broker.ca_file), "username": "chatterd",
           "password": PASSWORD}
    reason = await _first_connection(MqttConfig(**tls, **base))  # host name does not match the cert
    assert "CERTIFICATE_VERIFY_FAILED" in reason or "certificate verify failed" in reason
    reason = await _first_connection(MqttConfig(port=secure_broker.tls_port, tls=True, **base))  # unknown CA
    assert "certificate verify failed" in reason.lower()
    assert wrong not in caplog.text and PASSWORD not in caplog.text
