"""Wyoming time to first audio and RTF against a running daemon, one-shot and streaming.

`chatterd bench wyoming --uri tcp://HOST:10200 [--mqtt-host H --mqtt-port P --site S]` talks to a
daemon started with `chatterd run` (integrations.wyoming enabled), with the wyoming package's own
client, as Home Assistant does:

* one-shot: `synthesize` sent -> first `audio-chunk` received (time to first audio), and the
  request's wall time over its audio duration (RTF);
* streaming: `synthesize-start`, the first sentence's text, then the rest word by word at
  `--words-per-s` (an LLM writing); time from the first sentence's last piece to its first
  `audio-chunk`, and whether that audio began before the rest of the text had been sent;
* with `--mqtt-host`: the same text through `<base>/say` in the same run, alternating with the
  Wyoming requests, and the daemon's own `started.first_audio_ms` for it (the target: Wyoming
  first audio within 20 ms of it).
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from wyoming.audio import AudioChunk, AudioStart
from wyoming.client import AsyncTcpClient
from wyoming.tts import Synthesize, SynthesizeChunk, SynthesizeStart, SynthesizeStop

from bench.stats import Summary

TIMEOUT_S = 600.0
FIRST = "The kitchen lights are now off."
REST = "I also turned down the heating in the living room to nineteen degrees, as you asked."


def _first_time(times: list[float]) -> None:
    if not times:
        times.append(time.perf_counter())


async def _until(client: AsyncTcpClient, last: str, on_chunk: Any = None) -> tuple[int, int]:
    """Read to the first `last` event; returns (samples, rate)."""
    samples, rate = 0, 24000
    while True:
        event = await asyncio.wait_for(client.read_event(), TIMEOUT_S)
        if event is None:
            raise RuntimeError("the daemon closed the Wyoming connection")
        if AudioStart.is_type(event.type):
            rate = AudioStart.from_event(event).rate
        if AudioChunk.is_type(event.type):
            chunk = AudioChunk.from_event(event)
            if on_chunk is not None:
                on_chunk()
            samples += chunk.samples
        if event.type == last:
            return samples, rate


async def one_shot(host: str, port: int, text: str) -> dict[str, float]:
    first: list[float] = []
    async with AsyncTcpClient(host, port) as client:
        sent = time.perf_counter()
        await client.write_event(Synthesize(text=text).event())
        samples, rate = await _until(client, "audio-stop", lambda: _first_time(first))
        total = time.perf_counter() - sent
    audio_s = samples / rate
    return {"first_audio_s": first[0] - sent, "total_s": total, "audio_s": audio_s, "rtf": total / audio_s}


async def streaming(host: str, port: int, words_per_s: float) -> dict[str, float | bool]:
    first: list[float] = []
    async with AsyncTcpClient(host, port) as client:
        await client.write_event(SynthesizeStart().event())
        for piece in (FIRST[:13], FIRST[13:]):  # split mid-word, as an LLM's tokens come
            await client.write_event(SynthesizeChunk(text=piece).event())
        sentence_at = time.perf_counter()
        reader = asyncio.create_task(_until(client, "synthesize-stopped", lambda: _first_time(first)))
        for word in REST.split():
            await client.write_event(SynthesizeChunk(text=" " + word).event())
            await asyncio.sleep(1.0 / words_per_s)
        rest_sent_at = time.perf_counter()
        await client.write_event(Synthesize(text=f"{FIRST} {REST}").event())  # the compatibility copy
        await client.write_event(SynthesizeStop().event())
        samples, rate = await reader
        total = time.perf_counter() - sentence_at
    audio_s = samples / rate
    return {"first_audio_s": first[0] - sentence_at, "total_s": total, "audio_s": audio_s, "rtf": total / audio_s,
            "first_audio_before_rest_sent": first[0] < rest_sent_at}


async def mqtt_first_audio(host: str, port: int, site: str, text: str, n: int) -> float:
    import aiomqtt

    base = f"chatterd/{site}"
    request_id = f"bench-wyoming-{n}-{time.monotonic_ns()}"
    async with aiomqtt.Client(host, port) as client:
        await client.subscribe(f"{base}/event", qos=1)
        await client.publish(f"{base}/say", json.dumps({"text": text, "id": request_id}), qos=1)

        async def started() -> float:
            # To its end, not only its start: a Wyoming request sent next would wait behind it.
            first: float | None = None
            async for message in client.messages:
                event = json.loads(bytes(message.payload))  # type: ignore[arg-type,unused-ignore]
                if event.get("id") == request_id and event.get("event") == "started":
                    first = float(event["first_audio_ms"]) / 1000.0
                if event.get("id") == request_id and event.get("event") == "finished" and first is not None:
                    return first
                if event.get("id") == request_id and event.get("event") in ("error", "dropped", "stopped"):
                    raise RuntimeError(f"MQTT request ended with {event}")
            raise RuntimeError("no started event")

        return await asyncio.wait_for(started(), TIMEOUT_S)


def run(uri: str, repeats: int, words_per_s: float, mqtt: tuple[str, int, str] | None) -> dict[str, Any]:
    host, _, port = uri.removeprefix("tcp://").rpartition(":")

    async def main() -> dict[str, Any]:
        one, stream, via_mqtt = [], [], []
        for n in range(repeats):
            if mqtt is not None:
                via_mqtt.append(await mqtt_first_audio(*mqtt, FIRST, n))
            one.append(await one_shot(host, int(port), FIRST))
            stream.append(await streaming(host, int(port), words_per_s))
        results: dict[str, Any] = {
            "uri": uri,
            "text": FIRST,
            "one_shot": {k: Summary.of([r[k] for r in one]).to_json() for k in ("first_audio_s", "rtf", "audio_s")},
            "streaming": {k: Summary.of([float(r[k]) for r in stream]).to_json()
                          for k in ("first_audio_s", "rtf", "audio_s")},
            "streaming_first_audio_before_rest_sent": all(bool(r["first_audio_before_rest_sent"]) for r in stream),
        }
        if via_mqtt:
            results["mqtt_first_audio_s"] = Summary.of(via_mqtt).to_json()
        return results

    return asyncio.run(main())


def report(results: dict[str, Any]) -> str:
    def line(name: str, summary: dict[str, Any], unit: str = "ms", scale: float = 1000.0) -> str:
        return f"  {name}: {Summary(**summary).fmt(unit, scale)}"

    lines = [f"Wyoming at {results['uri']} ({results['text']!r})",
             line("one-shot first audio", results["one_shot"]["first_audio_s"]),
             line("one-shot RTF", results["one_shot"]["rtf"], "", 1.0),
             line("streaming first audio (after the first sentence)", results["streaming"]["first_audio_s"]),
             line("streaming RTF", results["streaming"]["rtf"], "", 1.0),
             f"  streaming: first audio before the rest of the text was sent: "
             f"{results['streaming_first_audio_before_rest_sent']}"]
    if "mqtt_first_audio_s" in results:
        lines.append(line("MQTT first audio (daemon's started event), same run", results["mqtt_first_audio_s"]))
        delta = (results["one_shot"]["first_audio_s"]["median"] - results["mqtt_first_audio_s"]["median"]) * 1000
        lines.append(f"  Wyoming - MQTT first audio: {delta:+.1f} ms (target: <= +20 ms)")
    return "\n".join(lines)
