"""Hostile input: property-based checks of the parsing edge and the router, then a fixed battery
through a real broker into the in-process daemon. Nothing crashes; every invalid message gets an
`error` event naming what was wrong; the daemon speaks normally afterwards."""

from __future__ import annotations

import json
import time
import unicodedata
from pathlib import Path
from typing import Any

from conftest import Broker
from fakes import FakeEngine
from harness import collecting, make_config, online_at, publish, running
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from daemon.commands import Router
from daemon.config import SpeechConfig
from daemon.errors import BadRequest
from daemon.events import END_EVENTS, Event
from daemon.messages import MAX_ID_CHARS, SayRequest, parse_say, parse_stop, parse_volume
from daemon.mqtt import Topics
from daemon.player import WavSink

LIMITS = SpeechConfig(max_text_chars=300, max_payload_bytes=4096)
CODES = {
    "payload_too_large", "invalid_utf8", "invalid_json", "not_an_object", "missing_field", "wrong_type",
    "bad_value", "empty_text", "text_too_long",
}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)
say_objects = st.fixed_dictionaries(
    {},
    optional={
        "text": json_values | st.text(max_size=400),
        "id": json_values | st.text(max_size=140),
        "voice": json_values,
        "volume": json_values,
        "priority": json_values | st.sampled_from(["low", "normal", "high"]),
        "interrupt": json_values,
        "client": json_values | st.text(max_size=140),
    },
)
payloads = st.one_of(
    st.binary(max_size=600),
    st.text(max_size=600).map(str.encode),
    say_objects.map(lambda o: json.dumps(o).encode()),
    say_objects.map(lambda o: json.dumps(o, ensure_ascii=False).encode()),
)


def _valid(request: SayRequest) -> bool:
    return (
        0 < len(request.text) <= LIMITS.max_text_chars
        and request.text == " ".join(request.text.split())
        and not any(unicodedata.category(ch) in ("Cc", "Cf", "Cs") for ch in request.text)
        and 0 < len(request.id) <= MAX_ID_CHARS
        and 0.0 <= request.volume <= 1.0
        and request.priority in ("low", "normal", "high")
    )


@settings(max_examples=400, deadline=None)
@given(payloads)
def test_say_payloads_parse_or_fail_with_a_known_code(payload: bytes) -> None:
    try:
        request = parse_say(payload, 0.0, LIMITS)
    except BadRequest as exc:
        assert exc.code in CODES and exc.message
    else:
        assert _valid(request), request


@settings(max_examples=200, deadline=None)
@given(payloads)
def test_stop_and_volume_payloads_parse_or_fail_with_a_known_code(payload: bytes) -> None:
    for parse in (parse_stop, parse_volume):
        try:
            parse(payload, LIMITS)  # type: ignore[operator]
        except BadRequest as exc:
            assert exc.code in CODES and exc.message


class _Service:
    """Records what the router asks of the speech service."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def submit(self, request: SayRequest) -> bool:
        self.calls.append("submit")
        return True

    def stop_all(self) -> None:
        self.calls.append("stop_all")

    def stop(self, request_id: str) -> bool:
        self.calls.append("stop")
        return True


class _Player:
    volume = 1.0


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(["say", "stop", "volume/set"]), payloads)
def test_router_turns_every_message_into_one_call_or_one_error(suffix: str, payload: bytes) -> None:
    topics = Topics("chatterd/prop")
    service, events = _Service(), []
    router = Router(topics, service, _Player(), LIMITS, events.append)  # type: ignore[arg-type]
    router.handle(f"chatterd/prop/{suffix}", payload, time.monotonic())
    errors: list[Event] = [e for e in events if e.event == "error"]
    assert len(service.calls) + len(errors) == (0 if suffix == "volume/set" and not errors else 1)
    assert 0.0 <= router._player.volume <= 1.0
    for error in errors:
        assert error.extras["code"] in CODES and error.extras["message"]


# --- the fixed battery, end to end ----------------------------------------------------------

NESTED = b'{"text": ' + b"[" * 20000 + b"]" * 20000 + b"}"
BATTERY: list[tuple[str, bytes, str]] = [
    # (name, payload, expected end: an error code, or "finished")
    ("10 MB", b"x" * (10 * 1024 * 1024), "payload_too_large"),
    ("10 MB JSON", json.dumps({"text": "y" * (10 * 1024 * 1024), "id": "huge"}).encode(), "payload_too_large"),
    ("only NUL bytes", b"\x00\x00\x00", "empty_text"),
    ("NUL inside text", b"hello\x00 world", "finished"),
    ("NUL inside JSON", json.dumps({"text": "a\u0000b c"}).encode(), "finished"),
    ("invalid UTF-8", b"caf\xe9 au lait", "invalid_utf8"),
    ("overlong UTF-8", b"\xc0\xaf etc", "invalid_utf8"),
    ("lone surrogate", b'{"text": "\\ud800 half"}', "finished"),
    ("only a lone surrogate", b'{"text": "\\udfff"}', "empty_text"),
    ("deeply nested JSON", NESTED, "invalid_json"),
    ("JSON array", b'{"text": ["a", "b"]}', "wrong_type"),
    ("number as text", b'{"text": 12345}', "wrong_type"),
    ("number as voice", b'{"text": "hi", "voice": 7}', "wrong_type"),
    ("number as priority", b'{"text": "hi", "priority": 1}', "wrong_type"),
    ("float as id", b'{"text": "hi", "id": 1.5}', "wrong_type"),
    ("number as client", b'{"text": "hi", "client": 9}', "wrong_type"),
    ("bool as volume", b'{"text": "hi", "volume": true}', "wrong_type"),
    ("huge exponent volume", b'{"text": "hi", "volume": 1e999}', "bad_value"),
    ("emoji", "🔥🎉 party time 🎂👩‍👩‍👧‍👦".encode(), "finished"),
    ("RTL Arabic", "مرحبا بالعالم، كيف حالك؟".encode(), "finished"),
    ("RTL Hebrew with marks", "\u202eשלום עולם\u202c".encode(), "finished"),
    ("SSML markup", b"<speak><prosody rate='fast'>Hello</prosody><break time='3s'/></speak>", "finished"),
    ("script markup", b"<script>alert('x')</script>", "finished"),
    ("one 5000-character word", b"a" * 5000, "finished"),
    ("5001 characters", b"a" * 5001, "text_too_long"),
    ("only punctuation", b"?!...,;:--((()))", "finished"),
    ("zero-width only", "\u200b\u200b\u2060".encode(), "empty_text"),
]


def test_battery_names_are_unique() -> None:
    names = [name for name, _, _ in BATTERY]
    assert len(set(names)) == len(names)  # outcomes are keyed by name


async def test_hostile_battery_end_to_end(mosquitto: Broker, tmp_path: Path) -> None:
    engine = FakeEngine(delay_s=0.0)
    config = make_config(mosquitto, tmp_path, rate_limit_per_s=0.0)
    sink = WavSink(tmp_path / "out.wav", engine.sample_rate)
    async with collecting(mosquitto) as collector, running(config, engine, sink) as daemon:
        await collector.until(lambda: bool(online_at(collector)))
        outcomes: dict[str, dict[str, Any]] = {}
        for name, payload, _ in BATTERY:
            before = len([e for e in collector.events() if e["event"] in END_EVENTS])
            await publish(mosquitto, [("say", payload)])
            await collector.until(
                lambda before=before: len([e for e in collector.events() if e["event"] in END_EVENTS]) > before
            )
            outcomes[name] = [e for e in collector.events() if e["event"] in END_EVENTS][before]
            assert not daemon.done(), f"the daemon died on {name}"
        await publish(mosquitto, [("say", json.dumps({"text": "all is well", "id": "after"}))])
        assert (await collector.end_of("after"))["event"] == "finished"
        await collector.barrier()  # a late second end event for anything would have arrived by now
        ends = [e for e in collector.events() if e["event"] in END_EVENTS]
    assert len(ends) == len(BATTERY) + 1
    for name, _, expected in BATTERY:
        end = outcomes[name]
        got = end["event"] if end["event"] != "error" else end["code"]
        assert got == expected, (name, end)
        if end["event"] == "error":
            assert end["message"] and len(end["message"]) < 300, (name, end)  # names the problem, briefly
