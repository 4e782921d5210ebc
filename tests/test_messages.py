"""Payload parsing at the MQTT edge: every good form and every kind of bad input."""

from __future__ import annotations

import json

import pytest

from daemon.config import SpeechConfig
from daemon.errors import BadRequest
from daemon.events import Event, error_event
from daemon.messages import parse_say, parse_stop, parse_volume, request_id_of

LIMITS = SpeechConfig(max_text_chars=50, max_payload_bytes=200)


def say(payload: bytes | str | dict[str, object]) -> object:
    if isinstance(payload, dict):
        payload = json.dumps(payload)
    if isinstance(payload, str):
        payload = payload.encode()
    return parse_say(payload, 12.5, LIMITS)


def bad(payload: bytes | str | dict[str, object]) -> BadRequest:
    with pytest.raises(BadRequest) as info:
        say(payload)
    return info.value


def test_plain_text_gets_defaults_and_a_fresh_id() -> None:
    first = parse_say(b"Hello world", 12.5, LIMITS)
    second = parse_say(b"Hello world", 12.5, LIMITS)
    assert first.text == "Hello world"
    assert first.voice is None and first.volume == 1.0 and first.priority == "normal"
    assert first.interrupt is False and first.received_at == 12.5 and first.source == "mqtt"
    assert first.id and first.id != second.id and len(first.id) <= 16


def test_json_with_every_field() -> None:
    request = parse_say(
        json.dumps(
            {"text": "Hi", "id": "r1", "voice": "alice", "volume": 0.5, "priority": "high", "interrupt": True}
        ).encode(),
        1.0,
        LIMITS,
        source="test",
    )
    assert (request.text, request.id, request.voice, request.volume) == ("Hi", "r1", "alice", 0.5)
    assert request.priority == "high" and request.interrupt is True and request.source == "test"


def test_json_extras_are_ignored_and_numbers_are_accepted_as_ids() -> None:
    request = say({"text": "Hi", "id": 42, "siteId": "kitchen", "volume": 1})
    assert request.id == "42"  # type: ignore[attr-defined]


def test_text_is_cleaned() -> None:
    request = say("  Hello\x00 \x07there\n\nhow\tare   you \r\n")
    assert request.text == "Hello there how are you"  # type: ignore[attr-defined]


def test_leading_whitespace_before_json_and_a_bom_are_fine() -> None:
    request = parse_say(b'\xef\xbb\xbf  \n {"text": "Hi"}', 0.0, LIMITS)
    assert request.text == "Hi"


def test_brace_inside_plain_text_is_plain_text() -> None:
    assert say("say {this}").text == "say {this}"  # type: ignore[attr-defined]


def test_empty_voice_means_default() -> None:
    assert say({"text": "Hi", "voice": ""}).voice is None  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("payload", "code", "fragment"),
    [
        (b"\xff\xfe bad", "invalid_utf8", "UTF-8"),
        ('{"text": "Hi"', "invalid_json", "invalid JSON"),
        ("{}", "missing_field", "'text'"),
        ({"text": None}, "wrong_type", "'text' must be a string, got null"),
        ({"text": 5}, "wrong_type", "'text' must be a string, got int"),
        ({"text": "Hi", "id": ["x"]}, "wrong_type", "'id' must be a string"),
        ({"text": "Hi", "id": ""}, "bad_value", "'id'"),
        ({"text": "Hi", "id": "a\nb"}, "bad_value", "'id'"),
        ({"text": "Hi", "voice": 3}, "wrong_type", "'voice' must be a string"),
        ({"text": "Hi", "volume": "loud"}, "wrong_type", "'volume' must be a number"),
        ({"text": "Hi", "volume": True}, "wrong_type", "'volume' must be a number"),
        ({"text": "Hi", "volume": 1.5}, "bad_value", "'volume' must be a number in 0..1"),
        ({"text": "Hi", "volume": -0.1}, "bad_value", "'volume'"),
        ({"text": "Hi", "priority": "urgent"}, "bad_value", "'priority' must be one of low, normal, high"),
        ({"text": "Hi", "priority": 1}, "wrong_type", "'priority' must be a string"),
        ({"text": "Hi", "interrupt": "yes"}, "wrong_type", "'interrupt' must be true or false"),
        ("", "empty_text", "empty"),
        ("  \n\t\x00 ", "empty_text", "empty"),
        ({"text": " \x01 "}, "empty_text", "empty"),
        ("x" * 51, "text_too_long", "51 characters; the limit is 50"),
        ("x" * 201, "payload_too_large", "201 bytes; the limit is 200"),
    ],
)
def test_bad_say_payloads(payload: bytes | str | dict[str, object], code: str, fragment: str) -> None:
    error = bad(payload)
    assert error.code == code
    assert fragment in error.message


def test_json_array_is_plain_text() -> None:
    # Only a payload starting with '{' is JSON; anything else is text to speak.
    assert say("[1, 2]").text == "[1, 2]"  # type: ignore[attr-defined]


def test_nan_volume_is_rejected() -> None:
    assert bad('{"text": "Hi", "volume": NaN}').code == "bad_value"


def test_deeply_nested_json_is_rejected_cleanly() -> None:
    limits = SpeechConfig(max_payload_bytes=1_000_000)
    payload = ('{"text": "x", "a": ' + "[" * 100_000 + "]" * 100_000 + "}").encode()
    with pytest.raises(BadRequest) as info:
        parse_say(payload, 0.0, limits)
    assert info.value.code == "invalid_json"


@pytest.mark.parametrize(
    ("payload", "expected"), [(b"", None), (b"  \n", None), (b"{}", None), (b'{"id": "r7"}', "r7")]
)
def test_stop_payloads(payload: bytes, expected: str | None) -> None:
    assert parse_stop(payload, LIMITS) == expected


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (b"r7", "invalid_json"),
        (b'{"id": ', "invalid_json"),
        (b'{"id": [1]}', "wrong_type"),
        (b"\xff", "invalid_utf8"),
    ],
)
def test_bad_stop_payloads(payload: bytes, code: str) -> None:
    with pytest.raises(BadRequest) as info:
        parse_stop(payload, LIMITS)
    assert info.value.code == code


@pytest.mark.parametrize(("payload", "expected"), [(b"0.5", 0.5), (b" 1 ", 1.0), (b"0", 0.0)])
def test_volume_payloads(payload: bytes, expected: float) -> None:
    assert parse_volume(payload, LIMITS) == expected


@pytest.mark.parametrize("payload", [b"loud", b"1.1", b"-1", b"nan", b""])
def test_bad_volume_payloads(payload: bytes) -> None:
    with pytest.raises(BadRequest) as info:
        parse_volume(payload, LIMITS)
    assert info.value.code == "bad_value"


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (b'{"text": 5, "id": "r1"}', "r1"),
        (b'{"id": 7}', "7"),
        (b"plain", None),
        (b'{"id": "a', None),
        (b"\xff", None),
    ],
)
def test_request_id_of_recovers_ids_from_bad_payloads(payload: bytes, expected: str | None) -> None:
    assert request_id_of(payload) == expected


def test_event_dict_shape() -> None:
    event = Event("finished", "r1", {"audio_s": 1.5}, ts=1700000000.12345)
    assert event.to_dict("kitchen") == {
        "event": "finished",
        "id": "r1",
        "site": "kitchen",
        "ts": 1700000000.123,
        "audio_s": 1.5,
    }
    assert json.loads(event.to_json("kitchen"))["audio_s"] == 1.5
    assert event.is_end and not Event("queued", "r1").is_end
    error = error_event(None, "invalid_json", "bad", topic="t")
    assert error.to_dict("s") | {"ts": 0} == {
        "event": "error",
        "id": None,
        "site": "s",
        "ts": 0,
        "code": "invalid_json",
        "message": "bad",
        "topic": "t",
    }
