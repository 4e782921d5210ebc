"""The phrase cache: exact round trip, LRU eviction within the size bound, keys that change."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from daemon.phrase_cache import PhraseCache
from daemon.player import output_stage, to_int16

RATE = 24000


def tone(seconds: float, amplitude: float = 0.3) -> np.ndarray:
    t = np.arange(int(RATE * seconds)) / RATE
    return (amplitude * np.sin(2 * np.pi * 330 * t)).astype(np.float32)


def test_round_trip_plays_the_same_samples(tmp_path: Path) -> None:
    cache = PhraseCache(tmp_path, 10_000_000, RATE, "id")
    key = cache.key("Hello.", "default")
    assert cache.get(key) is None
    audio = tone(0.5)
    cache.put(key, audio)
    again = PhraseCache(tmp_path, 10_000_000, RATE, "id")  # survives a restart
    got = again.get(key)
    assert got is not None and np.array_equal(to_int16(got), to_int16(audio))


def test_samples_beyond_full_scale_replay_as_they_played(tmp_path: Path) -> None:
    """The engine's audio is unclipped (the output stage clips); with levelling off nothing else
    bounds it, and a cached replay must still equal what was played, not wrap around."""
    cache = PhraseCache(tmp_path, 10_000_000, RATE, "id")
    key = cache.key("Loud.", "default")
    audio = tone(0.2, amplitude=1.6)
    audio[5] = np.nan
    cache.put(key, audio)
    got = cache.get(key)
    assert got is not None
    np.testing.assert_array_equal(to_int16(output_stage(got)), to_int16(output_stage(audio)))


def test_least_recently_used_phrases_are_evicted(tmp_path: Path) -> None:
    one_s = 2 * RATE + 44  # bytes of a 1 s entry
    cache = PhraseCache(tmp_path, 3 * one_s, RATE, "id")
    keys = [cache.key(f"Phrase {i}.", "default") for i in range(4)]
    for i, key in enumerate(keys[:3]):
        cache.put(key, tone(1.0))
        os.utime(tmp_path / f"{key}.wav", (time.time() - 100 + i, time.time() - 100 + i))
    cache = PhraseCache(tmp_path, 3 * one_s, RATE, "id")  # re-index with those ages
    assert cache.get(keys[0]) is not None  # now the most recently used
    cache.put(keys[3], tone(1.0))
    assert cache.size_bytes <= 3 * one_s and len(cache) == 3
    assert cache.get(keys[1]) is None  # the least recently used went
    assert all(cache.get(k) is not None for k in (keys[0], keys[2], keys[3]))
    assert not (tmp_path / f"{keys[1]}.wav").exists()


def test_key_depends_on_text_voice_and_identity(tmp_path: Path) -> None:
    cache = PhraseCache(tmp_path, 1_000_000, RATE, "model-a")
    other = PhraseCache(tmp_path, 1_000_000, RATE, "model-b")
    assert cache.key("Hi.", "default") == cache.key("Hi.", "default")
    assert len({cache.key("Hi.", "default"), cache.key("Hi!", "default"), cache.key("Hi.", "alice"),
                other.key("Hi.", "default")}) == 4


def test_key_depends_on_the_language(tmp_path: Path) -> None:
    cache = PhraseCache(tmp_path, 1_000_000, RATE, "model-a")
    assert cache.key("Hi.", "default") == cache.key("Hi.", "default", None)
    assert len({cache.key("Hi.", "default"), cache.key("Hi.", "default", "en"), cache.key("Hi.", "default", "de")}) == 3


def test_unreadable_entry_is_dropped(tmp_path: Path) -> None:
    cache = PhraseCache(tmp_path, 1_000_000, RATE, "id")
    key = cache.key("Broken.", "default")
    cache.put(key, tone(0.2))
    (tmp_path / f"{key}.wav").write_bytes(b"not a wav")
    assert cache.get(key) is None and len(cache) == 0


class _Collected:
    """An AudioOut that keeps what it is fed (daemon.utterance.AudioOut)."""

    def __init__(self) -> None:
        import concurrent.futures

        self.result: concurrent.futures.Future[object] = concurrent.futures.Future()
        self.first_frame_at: float | None = None
        self.samples = 0
        self.queued_seconds = 0.0

    def feed(self, pcm: np.ndarray) -> None:
        self.samples += len(pcm)

    def end(self) -> None:
        pass

    def stop(self) -> None:
        pass


def test_the_engine_hears_of_the_next_sentence_unless_the_cache_has_it(tmp_path: Path) -> None:
    # The engine may start decoding the request's next sentence while it vocodes this one (`then`),
    # which is wasted work for a sentence the phrase cache will play.
    from fakes import FakeEngine

    from daemon.messages import SayRequest
    from daemon.utterance import Synthesizer, Utterance
    from tts.text import normalize

    engine = FakeEngine()
    cache = PhraseCache(tmp_path, 10_000_000, RATE, "id")
    cache.put(cache.key(normalize("Five six."), "default", None), tone(0.5))
    synthesizer = Synthesizer(engine, 200, lambda request: "default", cache, group_sentences=False)
    out = _Collected()
    synthesizer.speak(Utterance(SayRequest(text="One two. Three four. Five six. Seven.", id="x")), out)  # type: ignore[arg-type]
    assert engine.calls == ["One two.", "Three four.", "Seven."]
    assert engine.thens == ["Three four.", None, None]
    assert out.samples > RATE // 2
