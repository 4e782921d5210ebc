"""Audio output: a Player thread that writes PCM to a Sink, gaplessly, one request after another.

PortAudio's blocking writes would stall the event loop, so they happen on the Player's own thread.
Requests reach it as `Playback` handles: any thread may `feed()` chunks, `end()` or `stop()` one;
the thread writes chunks in slices of at most `SLICE_S` so that a stop cuts the audio within one
slice (plus the device's own buffer), never after a long queued chunk.

Sinks:
* `PyAudioSink`: a PortAudio output stream (16-bit mono at the engine's rate), opened at start
  and kept open; the device is picked by exact name among output devices. When a write fails
  (device unplugged, ALSA error) the stream is closed and the write raises AudioDeviceError, so
  that request ends with an `error` event; a later write rescans the devices and reopens the
  stream. Attempts are spaced by an exponential backoff (`REOPEN_MIN_S` after a failure,
  doubling up to `REOPEN_MAX_S` while reopening, or writing soon after, keeps failing); writes
  in between fail at once, so queued requests are reported, not stuck. Once a stream has
  played `HEALTHY_S` of audio the device counts as back and the backoff is reset. The backoff
  reads `clock` (time.monotonic unless a test passes its own).
* `WavSink`: for `audio.output: wav:PATH`; a new 16-bit mono WAV per daemon run, holding every
  request's audio back to back. It is not paced: writes return at once, so a request "plays" as
  fast as it is synthesised and `stop` only cuts what has not been synthesised yet.
"""

from __future__ import annotations

import concurrent.futures
import logging
import queue
import threading
import time
import wave
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from daemon.config import AudioConfig
from daemon.errors import AudioDeviceError
from daemon.quiet import native_quiet

_LOGGER = logging.getLogger(__name__)

SLICE_S = 0.05  # longest piece handed to the sink at once: the bound on how late a stop takes effect
# Lateness below this is scheduling noise, not a gap anyone hears.
STALL_TOLERANCE_S = 0.01
REOPEN_MIN_S = 0.5  # backoff between attempts to reopen a failed audio device...
REOPEN_MAX_S = 30.0  # ... doubling up to this
HEALTHY_S = 1.0  # audio a (re)opened stream must play before the device counts as working again

FloatPCM = npt.NDArray[np.float32]


class Sink(Protocol):
    """Where PCM goes. `write` blocks until the device has accepted the samples."""

    sample_rate: int

    def write(self, pcm: FloatPCM) -> None:
        """Play float32 mono samples in [-1, 1]; raises AudioDeviceError if the device fails."""
        ...

    def close(self) -> None: ...


def open_sink(audio: AudioConfig, sample_rate: int) -> Sink:
    """The sink `audio.output` asks for, opened now so that a bad device fails at start."""
    if audio.output.startswith("wav:"):
        return WavSink(Path(audio.output[4:]), sample_rate)
    return PyAudioSink(sample_rate, device=audio.device, frames_per_buffer=audio.frames_per_buffer)


def output_stage(pcm: FloatPCM, gain: float = 1.0) -> FloatPCM:
    """The last step before audio leaves the daemon (speaker or Wyoming client), and the one place
    it is clipped: NaN/inf made finite, `gain` applied, then clipped to [-1, 1]."""
    piece = np.nan_to_num(pcm, nan=0.0, posinf=1.0, neginf=-1.0)
    if gain != 1.0:
        piece = piece * np.float32(gain)
    clipped: FloatPCM = np.clip(piece, -1.0, 1.0).astype(np.float32, copy=False)
    return clipped


def to_int16(pcm: FloatPCM) -> npt.NDArray[np.int16]:
    """Float samples in [-1, 1] (as `output_stage` leaves them) to 16-bit PCM (rounded, no dither)."""
    scaled: npt.NDArray[np.float32] = np.asarray(pcm, dtype=np.float32) * np.float32(32767.0)
    return np.round(scaled).astype(np.int16)


class PyAudioSink:
    """A PortAudio output stream: 16-bit mono at `sample_rate` on the named (or default) device."""

    def __init__(
        self,
        sample_rate: int,
        device: str | None = None,
        frames_per_buffer: int = 1024,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._clock = clock
        with native_quiet():  # PortAudio's probing makes ALSA and JACK print to fd 2
            self._setup(sample_rate, device, frames_per_buffer)

    def _setup(self, sample_rate: int, device: str | None, frames_per_buffer: int) -> None:
        import pyaudio  # PortAudio is only loaded when audio really goes to a device

        self.sample_rate = sample_rate
        self._pyaudio = pyaudio
        self._frames_per_buffer = frames_per_buffer
        self._wanted = device
        self._retry_at = float("-inf")  # clock() before which no reopen is attempted
        self._backoff = REOPEN_MIN_S
        self._written = 0  # samples the current stream has taken
        # PortAudio reads the ALSA configuration here, once per PyAudio instance.
        self._pa = pyaudio.PyAudio()
        self._stream: Any = None
        try:
            self._device_index, self.device_name = self._find_device(device)
            self._stream = self._open()
        except BaseException:
            self._pa.terminate()
            raise

    def output_devices(self) -> list[str]:
        """Names of the devices that can play audio, in PortAudio's order."""
        names = []
        for index in range(self._pa.get_device_count()):
            info = self._pa.get_device_info_by_index(index)
            if int(info["maxOutputChannels"]) > 0:
                names.append(str(info["name"]))
        return names

    def _find_device(self, name: str | None) -> tuple[int | None, str]:
        # Exact match only: ALSA lists "default" next to "sysdefault", "pulse" next to "pulse_x".
        if name is not None:
            for index in range(self._pa.get_device_count()):
                info = self._pa.get_device_info_by_index(index)
                if info["name"] == name and int(info["maxOutputChannels"]) > 0:
                    return index, name
            raise AudioDeviceError(f"audio device {name!r} not found; {self._device_list()}")
        try:
            info = self._pa.get_default_output_device_info()
        except OSError:
            raise AudioDeviceError(f"no default audio output device; {self._device_list()}") from None
        return None, str(info["name"])

    def _device_list(self) -> str:
        names = self.output_devices()
        if not names:
            return "PortAudio sees no output devices at all (is the user in the 'audio' group?)"
        return "output devices: " + ", ".join(repr(n) for n in names) + " (set audio.device to one of them)"

    def _open(self) -> Any:
        try:
            return self._pa.open(
                rate=self.sample_rate,
                channels=1,
                format=self._pyaudio.paInt16,
                output=True,
                output_device_index=self._device_index,
                frames_per_buffer=self._frames_per_buffer,
            )
        except (OSError, ValueError) as exc:
            raise AudioDeviceError(
                f"cannot open audio device {self.device_name!r} for {self.sample_rate} Hz mono output: "
                f"{exc}; {self._device_list()}"
            ) from exc

    def write(self, pcm: FloatPCM) -> None:
        if self._stream is None:
            self._reopen()  # the last write failed; the device may be back
        try:
            self._stream.write(to_int16(pcm).tobytes(), len(pcm))
        except OSError as exc:
            self._close_stream()
            self._back_off()
            raise AudioDeviceError(f"writing to audio device {self.device_name!r} failed: {exc}") from exc
        self._written += len(pcm)
        if self._written >= HEALTHY_S * self.sample_rate:
            self._backoff = REOPEN_MIN_S  # the device works

    def _back_off(self) -> None:
        self._retry_at = self._clock() + self._backoff
        self._backoff = min(self._backoff * 2, REOPEN_MAX_S)

    def _reopen(self) -> None:
        """Rescan the devices (a replugged one may have a new index) and reopen, honouring the backoff."""
        now = self._clock()
        if now < self._retry_at:
            raise AudioDeviceError(
                f"audio device {self.device_name!r} is unavailable; "
                f"the next attempt to reopen it is in {self._retry_at - now:.1f} s"
            )
        try:
            # On the player thread, while others log: only ALSA's hook, no fd redirect.
            with native_quiet(redirect_fd=False):
                self._pa.terminate()
                self._pa = self._pyaudio.PyAudio()
                self._device_index, self.device_name = self._find_device(self._wanted)
                self._stream = self._open()
        except AudioDeviceError:
            self._back_off()
            raise
        self._written = 0
        _LOGGER.warning("audio device %r reopened", self.device_name)

    def _close_stream(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            try:
                stream.stop_stream()  # lets the last buffer play out
                stream.close()
            except OSError as exc:
                _LOGGER.debug("closing the audio stream: %s", exc)

    def close(self) -> None:
        self._close_stream()
        self._pa.terminate()


class WavSink:
    """Writes what would be played to a 16-bit mono WAV file (truncated at open, unpaced)."""

    def __init__(self, path: Path, sample_rate: int) -> None:
        self.sample_rate = sample_rate
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._wav = wave.open(str(path), "wb")
        except OSError as exc:
            raise AudioDeviceError(f"cannot open {path} for writing: {exc.strerror or exc}") from exc
        self._wav.setnchannels(1)
        self._wav.setsampwidth(2)
        self._wav.setframerate(sample_rate)
        self._lock = threading.Lock()  # close() may race the player thread's last write

    def write(self, pcm: FloatPCM) -> None:
        with self._lock:
            try:
                # writeframes patches the RIFF header each time, so the file is valid after every write.
                self._wav.writeframes(to_int16(pcm).tobytes())
            except (OSError, ValueError) as exc:
                raise AudioDeviceError(f"writing {self.path} failed: {exc}") from exc

    def close(self) -> None:
        with self._lock:
            self._wav.close()


@dataclass(frozen=True)
class PlaybackResult:
    """How one request's playback ended."""

    samples: int  # samples handed to the sink
    first_frame_at: float | None  # time.monotonic() when the first one was handed over; None if none was
    stopped: bool  # True if stop() cut it, False if it played to its end()
    # Silence a listener heard after the first frame because the next chunk came late: the device
    # plays in real time from the first frame, so a chunk taken after the audio before it ran out.
    stall_s: float = 0.0


class _Marker:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


_END = _Marker("END")
_STOP = _Marker("STOP")
_CLOSE = _Marker("CLOSE")


class Playback:
    """One request's audio on its way out. feed/end/stop may be called from any thread.

    `result` resolves to a PlaybackResult once the audio has all been handed to the sink (after
    end()) or was cut (after stop()); it holds an AudioDeviceError if the sink failed.
    """

    def __init__(
        self,
        player: Player,
        request_id: str,
        volume: float,
        on_first_audio: Callable[[float], None] | None,
    ) -> None:
        self.request_id = request_id
        self.volume = volume
        self.result: concurrent.futures.Future[PlaybackResult] = concurrent.futures.Future()
        self._player = player
        self._on_first_audio = on_first_audio
        self._stop = threading.Event()
        self.samples = 0  # written by the player thread only
        self._fed = 0  # samples handed to feed()
        self.first_frame_at: float | None = None
        self.stall_s = 0.0  # written by the player thread only

    def feed(self, pcm: npt.ArrayLike) -> None:
        """Queue a chunk of float mono PCM; it plays right after the previous one."""
        chunk = np.asarray(pcm, dtype=np.float32).reshape(-1)
        self._fed += len(chunk)
        self._player._put(self, chunk)

    def end(self) -> None:
        """No more chunks: `result` resolves once the queued ones have been played."""
        self._player._put(self, _END)

    def stop(self) -> None:
        """Cut the audio now and drop the chunks not yet played."""
        self._stop.set()
        self._player._put(self, _STOP)

    @property
    def stop_requested(self) -> bool:
        return self._stop.is_set()

    @property
    def seconds(self) -> float:
        return self.samples / self._player.sample_rate

    @property
    def queued_seconds(self) -> float:
        """Audio fed but not yet written to the sink (not counting the device's own buffer)."""
        return (self._fed - self.samples) / self._player.sample_rate  # written <= fed, always


class Player:
    """Owns the sink and the thread that writes to it; see the module docstring."""

    def __init__(self, sink: Sink, volume: float = 1.0) -> None:
        self.sink = sink
        self.sample_rate = sink.sample_rate
        self.volume = volume  # master volume 0..1; read per slice, so a change applies within SLICE_S
        self._slice = max(1, int(sink.sample_rate * SLICE_S))
        self._queue: queue.SimpleQueue[tuple[Playback, FloatPCM | _Marker] | _Marker] = queue.SimpleQueue()
        self._pending: set[Playback] = set()  # playbacks not yet resolved
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="chatterd-player", daemon=True)
        self._closed = False

    def start(self) -> None:
        self._thread.start()

    def play(
        self,
        request_id: str,
        volume: float = 1.0,
        on_first_audio: Callable[[float], None] | None = None,
    ) -> Playback:
        """A new Playback; `on_first_audio(monotonic_time)` runs on the player thread after 1st write."""
        playback = Playback(self, request_id, volume, on_first_audio)
        with self._lock:
            if self._closed:
                raise AudioDeviceError("the audio player is closed")
            self._pending.add(playback)
        return playback

    def close(self, timeout: float = 5.0) -> None:
        """Stop the thread (cutting the audio), resolve every open playback as stopped, close the sink."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            pending = list(self._pending)
        for playback in pending:
            playback._stop.set()
        self._queue.put(_CLOSE)
        if self._thread.is_alive():
            self._thread.join(timeout)
        for playback in pending:
            self._resolve(playback, stopped=True)
        self.sink.close()

    def _put(self, playback: Playback, item: FloatPCM | _Marker) -> None:
        self._queue.put((playback, item))

    def _run(self) -> None:
        while True:
            entry = self._queue.get()
            if isinstance(entry, _Marker):  # _CLOSE
                return
            playback, item = entry
            if playback.result.done():
                continue  # leftovers of a playback that was stopped or failed
            if playback.stop_requested:
                self._resolve(playback, stopped=True)
            elif item is _END:
                self._resolve(playback, stopped=False)
            elif isinstance(item, np.ndarray):
                self._write(playback, item)

    def _write(self, playback: Playback, pcm: FloatPCM) -> None:
        if playback.first_frame_at is not None:
            # When the audio written so far runs out, played at real time from the first frame.
            runs_out_at = playback.first_frame_at + playback.stall_s + playback.samples / self.sample_rate
            late = time.monotonic() - runs_out_at
            if late > STALL_TOLERANCE_S:
                playback.stall_s += late
        for start in range(0, len(pcm), self._slice):
            if playback.stop_requested:
                self._resolve(playback, stopped=True)
                return
            piece = output_stage(pcm[start : start + self._slice], self.volume * playback.volume)
            handed_at = time.monotonic()
            try:
                self.sink.write(piece)
            except AudioDeviceError as exc:
                _LOGGER.error("%s", exc)
                self._fail(playback, exc)
                return
            first = playback.first_frame_at is None
            if first:
                playback.first_frame_at = handed_at
            playback.samples += len(piece)
            if first and playback._on_first_audio is not None:
                playback._on_first_audio(handed_at)

    def _resolve(self, playback: Playback, stopped: bool) -> None:
        with self._lock:
            self._pending.discard(playback)
        if not playback.result.done():
            result = PlaybackResult(playback.samples, playback.first_frame_at, stopped, round(playback.stall_s, 3))
            try:
                playback.result.set_result(result)
            except concurrent.futures.InvalidStateError:
                pass  # close() and the thread resolved it at the same moment

    def _fail(self, playback: Playback, exc: AudioDeviceError) -> None:
        with self._lock:
            self._pending.discard(playback)
        try:
            playback.result.set_exception(exc)
        except concurrent.futures.InvalidStateError:
            pass
