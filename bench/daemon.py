"""`chatterd bench daemon`: what a user's daemon reports about itself, with its own settings.

Against a running `chatterd run` (whatever its config: by default what a user gets on that
device), over MQTT: a short sentence and a ~20-second paragraph, alternating, `repeats` times
each. Figures come from the daemon's own events only: `started.first_audio_ms` (MQTT receipt to
the first PCM frame handed to PortAudio) and `finished` (`audio_s`, `synth_s`, `rtf`, and
`stall_s`: the silence a listener heard after the first frame because audio came late). Each request
waits for the previous one to finish, so none pays for another's queueing.

    chatterd bench daemon --mqtt-host localhost --site default --repeats 5
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from bench.stats import Summary

SHORT = "The front door is open."
# About 20 seconds of speech (50 words at ~150 words per minute).
PARAGRAPH = (
    "Good morning. It is seven o'clock, and the weather today is mild, with light wind from the west and a "
    "little rain after lunch. The washing machine finished its cycle an hour ago, the dishwasher is still "
    "running, and the front door was locked at midnight. Remember the dentist at ten."
)
TIMEOUT_S = 600.0


async def speak(host: str, port: int, site: str, text: str, request_id: str) -> dict[str, Any]:
    """Publish one say and return its started and end events."""
    import aiomqtt

    base = f"chatterd/{site}"
    async with aiomqtt.Client(host, port) as client:
        await client.subscribe(f"{base}/event", qos=1)
        await client.publish(f"{base}/say", json.dumps({"text": text, "id": request_id}), qos=1)
        got: dict[str, Any] = {}

        async def collect() -> dict[str, Any]:
            async for message in client.messages:
                event = json.loads(bytes(message.payload))  # type: ignore[arg-type,unused-ignore]
                if event.get("id") != request_id:
                    continue
                got[event["event"]] = event
                if event["event"] in ("finished", "stopped", "dropped", "error"):
                    return got
            raise RuntimeError("the event stream ended")

        return await asyncio.wait_for(collect(), TIMEOUT_S)


def run(host: str, port: int, site: str, repeats: int) -> dict[str, Any]:
    async def main() -> dict[str, Any]:
        rows: dict[str, list[dict[str, float]]] = {"short": [], "paragraph": []}
        for n in range(repeats):
            for name, text in (("short", SHORT), ("paragraph", PARAGRAPH)):
                events = await speak(host, port, site, text, f"bench-daemon-{name}-{n}-{time.monotonic_ns()}")
                if "finished" not in events:
                    raise RuntimeError(f"{name} did not finish: {events}")
                finished = events["finished"]
                rows[name].append({"first_audio_s": events["started"]["first_audio_ms"] / 1000.0,
                                   "rtf": finished["rtf"], "audio_s": finished["audio_s"],
                                   "synth_s": finished["synth_s"], "stall_s": finished["stall_s"]})
        return {
            "site": site,
            "texts": {"short": SHORT, "paragraph": PARAGRAPH},
            **{name: {k: Summary.of([r[k] for r in runs]).to_json() for k in runs[0]} for name, runs in rows.items()},
        }

    return asyncio.run(main())


def report(results: dict[str, Any]) -> str:
    lines = [f"chatterd/{results['site']}: the daemon's own started/finished events"]
    for name in ("short", "paragraph"):
        row = results[name]
        first, rtf, audio, stall = (Summary(**row[k]) for k in ("first_audio_s", "rtf", "audio_s", "stall_s"))
        lines.append(f"  {name:9} first audio {first.fmt()}, RTF {rtf.fmt('', 1.0)}, audio {audio.fmt('s', 1.0)}, "
                     f"stalls {stall.fmt('s', 1.0)}")
    return "\n".join(lines)
