"""Loudness levelling: voices converge to the target level, smoothly and without clipping."""

from __future__ import annotations

import numpy as np
import pytest

from daemon.loudness import Leveller, dbfs, voiced_level

RATE = 24000


def chunk(amplitude: float, seconds: float = 0.2) -> np.ndarray:
    t = np.arange(int(RATE * seconds)) / RATE
    return (amplitude * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


def level(pcm: np.ndarray) -> float:
    return dbfs(voiced_level(pcm, RATE)[0])


def test_quiet_and_loud_voices_come_out_at_the_target() -> None:
    leveller = Leveller(-20.0, 20.0, RATE)
    for voice, amplitude in (("loud", 0.8), ("quiet", 0.02)):
        out = np.concatenate([leveller.process(voice, chunk(amplitude)) for _ in range(10)])
        assert level(out[RATE // 5 :]) == pytest.approx(-20.0, abs=0.3), voice


def test_gain_is_bounded_and_ramps_without_steps() -> None:
    leveller = Leveller(-20.0, 6.0, RATE)
    out = leveller.process("whisper", chunk(0.01))
    assert leveller.gain_db("whisper") == pytest.approx(6.0)
    assert level(out) == pytest.approx(level(chunk(0.01)) + 6.0, abs=0.1)
    leveller = Leveller(-20.0, 12.0, RATE)
    leveller.process("v", chunk(0.1))
    second = leveller.process("v", chunk(0.4))  # the level estimate moves: the gain ramps
    envelope = np.abs(second).reshape(-1, 240).max(axis=1)
    assert np.all(np.abs(np.diff(envelope)) < 0.02)


def test_peaks_never_clip_and_silence_and_off_pass_through() -> None:
    leveller = Leveller(-3.0, 20.0, RATE)
    spiky = chunk(0.05)
    spiky[100] = 0.9
    assert np.abs(leveller.process("v", spiky)).max() <= 0.99 + 1e-6
    silence = np.zeros(4800, np.float32)
    assert np.array_equal(Leveller(-20.0, 12.0, RATE).process("v", silence), silence)
    off = Leveller(-20.0, 0.0, RATE)
    assert off.process("v", spiky) is spiky
