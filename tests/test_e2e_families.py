"""End to end for the other members of the family: `chatterd run` with the original and with the
multilingual model (random weights), real mosquitto and PortAudio through an ALSA file PCM.
Turbo, the default model, is tests/test_e2e.py's daemon."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from model_fixtures import checkpoint_of, fast_tts_settings
from test_e2e import BASE, Daemon, _by_id, _exchange, start_daemon, stop_daemon

pytestmark = [pytest.mark.model, pytest.mark.e2e]


@pytest.fixture(scope="module", params=["original", "multilingual"])
def family_daemon(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    family = request.param
    handle = start_daemon(fast_tts_settings(checkpoint_of(family), family), tmp_path_factory.mktemp(family))
    handle.family = family  # type: ignore[attr-defined]
    try:
        yield handle
    finally:
        stop_daemon(handle)


async def test_plain_text_and_json_are_spoken(family_daemon: Daemon) -> None:
    events = await _exchange(family_daemon, [
        (f"{BASE}/say", b"Hello kitchen."),
        (f"{BASE}/say", json.dumps({"text": "The front door is open.", "id": "door"}).encode()),
    ], ends=2)
    plain = next(e["id"] for e in events if e["event"] == "queued" and e["id"] != "door")
    for request_id in (plain, "door"):
        assert _by_id(events, request_id) == ["queued", "started", "finished"], events
    assert f"loaded the {family_daemon.family} model" in family_daemon.log()  # type: ignore[attr-defined]


async def test_languages_of_the_multilingual_model(family_daemon: Daemon) -> None:
    """German, Japanese and Chinese are spoken (Chinese without word segmentation offline, as upstream
    degrades); a language the model lacks gets an error naming the supported ones, and the next
    message is spoken. The original model speaks English only: German is an error there."""
    if family_daemon.family == "original":  # type: ignore[attr-defined]
        events = await _exchange(family_daemon, [
            (f"{BASE}/say", json.dumps({"text": "Die Tür ist offen.", "language": "de", "id": "de"}).encode()),
            (f"{BASE}/say", json.dumps({"text": "Next one.", "id": "next"}).encode()),
        ], ends=2)
        error = next(e for e in events if e["id"] == "de")
        assert error["event"] == "error" and error["code"] == "unsupported_language" and "en" in error["message"]
        assert _by_id(events, "next") == ["queued", "started", "finished"]
        return
    texts = {"de": "Die Haustür ist offen.", "ja": "玄関のドアが開いています。", "zh": "前门开着。"}
    messages = [(f"{BASE}/say", json.dumps({"text": text, "language": lang, "id": lang}).encode())
                for lang, text in texts.items()]
    messages += [(f"{BASE}/say", json.dumps({"text": "Hola.", "language": "xx", "id": "bad"}).encode()),
                 (f"{BASE}/say", json.dumps({"text": "Hej då.", "language": "sv", "id": "sv"}).encode())]
    events = await _exchange(family_daemon, messages, ends=len(messages))
    for lang in (*texts, "sv"):
        assert _by_id(events, lang) == ["queued", "started", "finished"], (lang, events)
    error = next(e for e in events if e["id"] == "bad")
    assert error["event"] == "error" and error["code"] == "unsupported_language"
    assert "de" in error["message"] and "zh" in error["message"]


def test_checkpoints_are_the_family_layout(family_daemon: Daemon) -> None:
    from tts.families import family

    fam = family(family_daemon.family)  # type: ignore[attr-defined]
    directory: Path = checkpoint_of(fam.name)
    assert all((directory / name).is_file() for name in fam.files)
