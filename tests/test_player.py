"""The Player thread and its sinks: gapless order, volume, prompt stop, WAV output, real PortAudio."""

from __future__ import annotations

import time
import wave
from pathlib import Path

import numpy as np
import pytest
from conftest import AlsaCapture
from fakes import PacedSink

from daemon.config import AudioConfig
from daemon.errors import AudioDeviceError
from daemon.player import Player, PyAudioSink, WavSink, open_sink, to_int16

RATE = 24000


def sine(seconds: float, amplitude: float = 0.5, rate: int = RATE) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (amplitude * np.sin(2 * np.pi * 440.0 * t)).astype(np.float32)


def read_wav(path: Path) -> np.ndarray:
    with wave.open(str(path), "rb") as wav:
        assert (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) == (1, 2, RATE)
        return np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")


def test_wav_sink_plays_requests_back_to_back(tmp_path: Path) -> None:
    path = tmp_path / "out.wav"
    player = Player(WavSink(path, RATE))
    player.start()
    a, b = sine(0.13), sine(0.07, 0.25)
    first = player.play("a")
    second = player.play("b")
    for chunk in np.array_split(a, 3):
        first.feed(chunk)
    first.end()
    second.feed(b)
    second.end()
    result_a, result_b = first.result.result(5), second.result.result(5)
    assert (result_a.samples, result_a.stopped) == (len(a), False)
    assert (result_b.samples, result_b.stopped) == (len(b), False)
    assert result_a.first_frame_at is not None and result_b.first_frame_at is not None
    assert result_a.first_frame_at <= result_b.first_frame_at
    # The header is patched on every write: the file is readable before close.
    assert len(read_wav(path)) == len(a) + len(b)
    player.close()
    np.testing.assert_array_equal(read_wav(path), np.concatenate([to_int16(a), to_int16(b)]))


def test_volume_multiplies_master_and_request_and_clips() -> None:
    sink = PacedSink(pace=0.0)
    player = Player(sink, volume=0.5)
    player.start()
    quiet = player.play("quiet", volume=0.5)
    quiet.feed(np.full(100, 0.8, np.float32))
    quiet.end()
    quiet.result.result(5)
    player.volume = 1.0
    loud = player.play("loud")
    loud.feed(np.array([1.5, -3.0, np.nan, 0.25], np.float32))
    loud.end()
    loud.result.result(5)
    player.close()
    samples = sink.samples()
    np.testing.assert_allclose(samples[:100], 0.2, rtol=1e-6)
    np.testing.assert_array_equal(samples[100:], [1.0, -1.0, 0.0, 0.25])


def test_first_audio_callback_reports_the_handover_time() -> None:
    player = Player(PacedSink(pace=0.0))
    player.start()
    seen: list[float] = []
    before = time.monotonic()
    playback = player.play("a", on_first_audio=seen.append)
    playback.feed(sine(0.2))
    playback.end()
    result = playback.result.result(5)
    player.close()
    assert seen == [result.first_frame_at] and before <= seen[0] <= time.monotonic()


def test_stop_cuts_a_long_chunk_within_a_slice() -> None:
    sink = PacedSink()  # real-time pace
    player = Player(sink)
    player.start()
    playback = player.play("long")
    playback.feed(sine(3.0))  # one big chunk: the stop must not wait for it to finish
    playback.end()
    time.sleep(0.2)
    stopped_at = time.monotonic()
    playback.stop()
    result = playback.result.result(5)
    took = time.monotonic() - stopped_at
    player.close()
    assert result.stopped
    assert took < 0.15, f"stop took {took:.3f} s"
    assert 0.1 * RATE < result.samples < 0.5 * RATE
    assert len(sink.samples()) == result.samples


def test_stop_while_waiting_for_chunks_resolves_at_once() -> None:
    player = Player(PacedSink(pace=0.0))
    player.start()
    playback = player.play("starved")
    playback.feed(sine(0.05))
    time.sleep(0.05)
    playback.stop()
    result = playback.result.result(1)
    player.close()
    assert result.stopped and result.samples == int(0.05 * RATE)


def test_sink_failure_fails_the_playback_and_the_next_one_plays() -> None:
    sink = PacedSink(pace=0.0)
    player = Player(sink)
    player.start()
    sink.fail = True
    broken = player.play("broken")
    broken.feed(sine(0.1))
    broken.end()
    with pytest.raises(AudioDeviceError, match="unplugged"):
        broken.result.result(5)
    sink.fail = False
    fine = player.play("fine")
    fine.feed(sine(0.1))
    fine.end()
    assert fine.result.result(5).samples == int(0.1 * RATE)
    player.close()


def test_close_resolves_open_playbacks_as_stopped() -> None:
    sink = PacedSink()
    player = Player(sink)
    player.start()
    playing = player.play("playing")
    playing.feed(sine(2.0))
    waiting = player.play("waiting")
    time.sleep(0.1)
    player.close()
    assert playing.result.result(1).stopped and waiting.result.result(1).stopped
    assert sink.closed
    with pytest.raises(AudioDeviceError):
        player.play("late")


def test_open_sink_picks_wav(tmp_path: Path) -> None:
    sink = open_sink(AudioConfig(output=f"wav:{tmp_path / 'x' / 'o.wav'}"), RATE)
    assert isinstance(sink, WavSink)
    sink.close()
    assert (tmp_path / "x" / "o.wav").exists()


def test_wav_sink_reports_an_unwritable_path(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(AudioDeviceError, match="cannot open"):
        WavSink(tmp_path / "file" / "o.wav", RATE)


def test_pyaudio_sink_plays_through_alsa(alsa_capture: AlsaCapture) -> None:
    audio = sine(0.5)
    player = Player(PyAudioSink(RATE, frames_per_buffer=512))
    player.start()
    playback = player.play("a")
    for chunk in np.array_split(audio, 7):
        playback.feed(chunk)
    playback.end()
    assert playback.result.result(5).samples == len(audio)
    player.close()
    captured = alsa_capture.samples()
    # 16-bit mono at 24 kHz passes the plug unchanged; ALSA may pad the last period with silence.
    assert len(captured) >= len(audio)
    np.testing.assert_array_equal(captured[: len(audio)], to_int16(audio))
    assert not captured[len(audio) :].any()


def test_pyaudio_sink_selects_a_device_by_exact_name(alsa_capture: AlsaCapture) -> None:
    sink = PyAudioSink(RATE, device="tts_capture")
    assert sink.device_name == "tts_capture"
    assert {"default", "tts_capture"} <= set(sink.output_devices())
    sink.write(sine(0.1))
    sink.close()
    assert len(alsa_capture.samples()) >= int(0.1 * RATE)


def test_pyaudio_sink_unknown_device_lists_the_real_ones(alsa_capture: AlsaCapture) -> None:
    with pytest.raises(AudioDeviceError) as info:
        PyAudioSink(RATE, device="tts_captur")  # a prefix of a real name must not match
    message = str(info.value)
    assert "audio device 'tts_captur' not found" in message
    assert "'tts_capture'" in message and "'default'" in message and "audio.device" in message


def test_stall_is_the_silence_after_the_first_frame_when_audio_comes_late() -> None:
    """0.1 s of audio, then the next chunk 0.4 s later: the listener heard about 0.3 s of silence;
    chunks that arrive in time add none."""
    sink = PacedSink(pace=1.0)
    player = Player(sink)
    player.start()
    try:
        on_time = player.play("on-time")
        for _ in range(3):
            on_time.feed(np.zeros(2400, np.float32))  # queued ahead: never late
        on_time.end()
        assert on_time.result.result(5).stall_s == 0.0
        late = player.play("late")
        late.feed(np.zeros(2400, np.float32))
        time.sleep(0.4)
        late.feed(np.zeros(2400, np.float32))
        late.end()
        assert late.result.result(5).stall_s == pytest.approx(0.3, abs=0.06)
    finally:
        player.close()
