"""Hermes replies as the real `rhasspy-hermes` 0.6.2 library reads them.

Its message classes build the say payloads (`TtsSay(...).payload()` is camelCase, as Rhasspy's
services send it; the library's own CLI `speak-sentence` sends `dataclasses.asdict(TtsSay(...))`,
snake_case) and parse the replies the way its clients do: the CLI matches `session_id` in the
reply and builds `TtsSayFinished(**payload)`, which raises on a camelCase key; services use
`TtsSayFinished.from_dict(payload)` / `TtsError.from_dict(payload)`.

rhasspy-hermes pins paho-mqtt 1.5.0, which aiomqtt 2 cannot share a virtualenv with, so it is
installed without its dependencies (`pip install --no-deps rhasspy-hermes==0.6.2`, done by
scripts/setup; its one real import, dataclasses-json, is in the dev extra). The MQTT traffic
here goes through aiomqtt; only the library's message classes are used.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Broker, require_module
from fakes import FAIL, FakeEngine, PacedSink
from harness import Listener, Received, listening, running

from daemon.config import config_from_dict

SITE = "interop"
BASE = f"chatterd/{SITE}"

require_module("rhasspyhermes", "pip install --no-deps rhasspy-hermes==0.6.2, as scripts/setup does")

from rhasspyhermes.tts import TtsError, TtsSay, TtsSayFinished  # noqa: E402  (after the check above)


@pytest.fixture
async def ear(mosquitto: Broker, tmp_path: Path) -> AsyncIterator[Listener]:
    """A daemon with Hermes enabled for site `interop`, and a listener on `hermes/#` and its events."""
    config = config_from_dict(
        {
            "mqtt": {"host": mosquitto.host, "port": mosquitto.port, "site": SITE},
            "speech": {"rate_limit_per_s": 0},
            "audio": {"max_gain_db": 0},
            "integrations": {"hermes": {"enabled": True}},
        }
    )
    async with listening(mosquitto, "#", base=BASE) as listener:
        engine = FakeEngine()
        async with running(config, engine, PacedSink(engine.sample_rate, pace=0.0)):
            await listener.wait_for(lambda r: r.topic == f"{BASE}/status" and r.payload == b"online")
            yield listener


def _reply(topic: str, say_id: str) -> Any:
    def match(r: Received) -> bool:
        if r.topic != topic:
            return False
        body = r.json()
        return bool(body.get("id") == say_id or body.get("context") == say_id)

    return match


async def test_snake_case_say_from_the_library_cli_gets_a_reply_it_can_construct(ear: Listener) -> None:
    say = TtsSay(text="Snake case from the CLI.", site_id=SITE, id="cli-1", session_id="session-1")
    await ear.publish(TtsSay.topic(), json.dumps(dataclasses.asdict(say)))  # what `speak-sentence` sends
    reply = (await ear.wait_for(_reply(TtsSayFinished.topic(), "cli-1"))).json()
    # The CLI's own match, then its own parse: TtsSayFinished(**payload) raises on a camelCase key.
    assert reply.get("session_id", "") == "session-1" and reply.get("site_id", "default") == SITE
    assert TtsSayFinished(**reply) == TtsSayFinished(site_id=SITE, id="cli-1", session_id="session-1")
    assert set(reply) == {"id", "site_id", "session_id"}


async def test_snake_case_error_reply_is_snake_case_only(ear: Listener) -> None:
    say = TtsSay(text=f"{FAIL} broken words", site_id=SITE, id="cli-2", session_id="session-2")
    await ear.publish(TtsSay.topic(), json.dumps(dataclasses.asdict(say)))
    error = (await ear.wait_for(_reply(TtsError.topic(), "cli-2"))).json()
    parsed = TtsError(**error)
    assert (parsed.site_id, parsed.session_id, parsed.context) == (SITE, "session-2", "cli-2") and parsed.error
    finished = (await ear.wait_for(_reply(TtsSayFinished.topic(), "cli-2"))).json()
    assert TtsSayFinished(**finished).session_id == "session-2"


async def test_camel_case_say_gets_camel_case_replies(ear: Listener) -> None:
    ok = TtsSay(text="Camel case from Rhasspy.", site_id=SITE, id="svc-1", session_id="s-1", lang="en_US")
    bad = TtsSay(text=f"{FAIL} failing words", site_id=SITE, id="svc-2", session_id="s-2")
    for say in (ok, bad):
        await ear.publish(TtsSay.topic(), say.payload())
    finished = (await ear.wait_for(_reply(TtsSayFinished.topic(), "svc-1"))).json()
    assert set(finished) == {"id", "siteId", "sessionId"}
    assert TtsSayFinished.from_dict(finished) == TtsSayFinished(site_id=SITE, id="svc-1", session_id="s-1")
    error = (await ear.wait_for(_reply(TtsError.topic(), "svc-2"))).json()
    assert set(error) == {"error", "context", "siteId", "sessionId"}
    parsed = TtsError.from_dict(error)
    assert (parsed.site_id, parsed.session_id, parsed.context) == (SITE, "s-2", "svc-2") and parsed.error
    failed = (await ear.wait_for(_reply(TtsSayFinished.topic(), "svc-2"))).json()
    assert TtsSayFinished.from_dict(failed).session_id == "s-2"
    assert (await ear.end_of("svc-1"))["event"] == "finished"
