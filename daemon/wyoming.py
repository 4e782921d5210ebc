"""A streaming Wyoming TTS server (Home Assistant Assist), built on the `wyoming` package.

Conversation, per connection (`WyomingConnection`, one `AsyncEventHandler` per client):

    describe                   -> info: one TTS program, the loaded model's voices (each with the
                                  languages the model speaks), supports_synthesize_streaming
    synthesize                 -> audio-start, audio-chunk..., audio-stop: one segment for the whole
                                  text, chunks sent while synthesis runs
    synthesize-start           -> (nothing yet; its voice holds for the stream)
    synthesize-chunk...        -> text pieces, split anywhere; each sentence, once complete, is
                                  synthesised at once and sent as its own audio segment
    synthesize (inside a stream: the client's compatibility copy of the whole text, ignored)
    synthesize-stop            -> the rest of the text's segment(s), then synthesize-stopped
    ping                       -> pong

The voice is chosen by name (`voice.name`, one of info's voices) and/or by language
(`voice.language`, an ISO code or a locale such as en_US); neither means the defaults.

Every segment is a request like an MQTT one: it goes through admission (rate limit per stream,
dedupe off, priority `integrations.wyoming.priority`), the one queue and the one engine, and its
events appear on `<base>/event` with `"source": "wyoming"`; only its audio differs, going back
over the connection (`WyomingAudio`) instead of to the speaker.

Errors: bad input (empty or too long text, unknown voice or language, a malformed event, an event
out of order) gets a Wyoming `error` event whose `code` is a `daemon.events.ErrorCode` value and
whose `text` says what was wrong; the connection stays open. A request that fails or is dropped
gets `error` too; a one-shot `synthesize` always ends with `audio-stop` (after the error, with an
empty segment if none had started), so a client that waits for it is never left hanging. Unknown
event types are ignored, as the Wyoming convention asks. A client that disconnects cancels its
queued and running requests at once (`stopped`, reason `disconnected`). A connection beyond
`max_connections` is told `too_many_connections` and closed.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ipaddress
import itertools
import logging
import time
from collections.abc import Callable
from functools import partial
from importlib import metadata
from typing import Any
from urllib.parse import urlparse

import numpy as np
import numpy.typing as npt
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.error import Error as WyomingError
from wyoming.event import Event as WyomingEvent
from wyoming.event import async_read_event, async_write_event
from wyoming.info import Attribution, Describe, Info, TtsProgram, TtsVoice
from wyoming.ping import Ping, Pong
from wyoming.server import AsyncEventHandler, AsyncServer
from wyoming.tts import Synthesize, SynthesizeChunk, SynthesizeStart, SynthesizeStop, SynthesizeStopped

from daemon.config import SpeechConfig, WyomingConfig
from daemon.engine import SpeechEngine
from daemon.errors import BadRequest
from daemon.events import ErrorCode, OutEvent
from daemon.messages import Priority, SayRequest, check_language, clean_text
from daemon.player import PlaybackResult, output_stage, to_int16
from daemon.speech import SpeechService
from tts.text import split_sentences

_LOGGER = logging.getLogger(__name__)

WIDTH = 2  # bytes per sample: 16-bit PCM
CHANNELS = 1
ATTRIBUTION = Attribution(name="Resemble AI (Chatterbox)", url="https://github.com/resemble-ai/chatterbox")
SOURCE = "wyoming"


def _version() -> str:
    try:
        return metadata.version("chatterd")
    except metadata.PackageNotFoundError:
        return "0.0.0"


def info_of(engine: SpeechEngine) -> Info:
    """The `info` answer to `describe`: one TTS program with the loaded model's voices."""
    languages = list(engine.languages)
    voices = [
        TtsVoice(
            name=voice,
            attribution=ATTRIBUTION,
            installed=True,
            description=f"{voice} (Chatterbox {engine.model})",
            version=None,
            languages=languages,
        )
        for voice in engine.voices
    ]
    program = TtsProgram(
        name="chatterd",
        attribution=ATTRIBUTION,
        installed=True,
        description=f"chatterd: streaming Chatterbox {engine.model} text to speech",
        version=_version(),
        voices=voices,
        supports_synthesize_streaming=True,
    )
    return Info(tts=[program])


# --- text pieces -> sentences ----------------------------------------------------------------


class SentenceBuffer:
    """Collects a stream's text pieces and hands out each sentence once it is complete.

    A sentence is complete once the text after it has begun (`tts.text.split_sentences` finds
    its boundary) or once the buffer ends in whitespace after it; a sentence longer than
    `max_chars` comes out in pieces (clauses, then words) as they fill.
    """

    def __init__(self, max_chars: int) -> None:
        self.max_chars = max_chars
        self._text = ""

    def add(self, piece: str) -> list[str]:
        self._text += piece
        pieces = split_sentences(self._text, self.max_chars)
        if not pieces:
            return []
        ended = self._text[-1:].isspace()
        last = pieces[-1]
        if ended and last.rstrip("\"')]").endswith((".", "!", "?")):
            self._text = ""
            return pieces
        self._text = last + (" " if ended else "")
        return pieces[:-1]

    def flush(self) -> list[str]:
        pieces = split_sentences(self._text, self.max_chars)
        self._text = ""
        return pieces


# --- audio back to the client ---------------------------------------------------------------


class _Segment:
    """One request's audio segment on a connection (see WyomingAudio)."""

    def __init__(self, request_id: str, rate: int, on_first_audio: Callable[[float], None] | None) -> None:
        self.request_id = request_id
        self.rate = rate
        self.on_first_audio = on_first_audio
        self.result: concurrent.futures.Future[PlaybackResult] = concurrent.futures.Future()
        self.started = False  # audio-start written
        self.closed = False  # audio-stop written
        self.stop_requested = False
        self.samples = 0  # written to the connection
        self.fed = 0  # handed to feed()
        self.first_frame_at: float | None = None

    def resolve(self, stopped: bool) -> None:
        if not self.result.done():
            self.result.set_result(PlaybackResult(self.samples, self.first_frame_at, stopped))


class WyomingAudio:
    """The AudioOut of a request whose audio goes back over a Wyoming connection.

    feed/end/stop come from the synthesis thread; the connection's writer task sends the chunks
    in order (`audio-start` before the first, `audio-stop` after end()). `result` resolves once
    everything fed has been written to the socket, or at once after stop().
    """

    def __init__(self, connection: WyomingConnection, segment: _Segment) -> None:
        self._connection = connection
        self._segment = segment
        self.result = segment.result

    @property
    def samples(self) -> int:
        return self._segment.samples

    @samples.setter
    def samples(self, value: int) -> None:
        self._segment.samples = value

    @property
    def first_frame_at(self) -> float | None:
        return self._segment.first_frame_at

    @first_frame_at.setter
    def first_frame_at(self, value: float | None) -> None:
        self._segment.first_frame_at = value

    def feed(self, pcm: npt.ArrayLike) -> None:
        chunk = np.asarray(pcm, dtype=np.float32).reshape(-1)
        self._segment.fed += len(chunk)
        data = to_int16(output_stage(chunk)).astype("<i2").tobytes()
        self._connection.post(("chunk", self._segment, data))

    def end(self) -> None:
        self._connection.post(("end", self._segment, b""))

    def stop(self) -> None:
        self._segment.stop_requested = True
        self._connection.post(("stop", self._segment, b""))

    @property
    def queued_seconds(self) -> float:
        """Audio fed but not yet played, modelling a client that plays from the first chunk in real time."""
        segment = self._segment
        played = 0.0 if segment.first_frame_at is None else time.monotonic() - segment.first_frame_at
        return max(0.0, segment.fed / segment.rate - played)


class ConnectionAudio:
    """The Destination a connection gives its requests: `play` opens a segment on that connection."""

    def __init__(self, connection: WyomingConnection, rate: int) -> None:
        self._connection = connection
        self._rate = rate

    def play(
        self, request_id: str, volume: float = 1.0, on_first_audio: Callable[[float], None] | None = None
    ) -> WyomingAudio:
        segment = self._connection.segment(request_id)
        segment.on_first_audio = on_first_audio
        return WyomingAudio(self._connection, segment)


# --- one client ----------------------------------------------------------------------------


class _Stream:
    """An open synthesize-start ... synthesize-stop stream."""

    def __init__(self, voice: str | None, language: str | None, max_chars: int) -> None:
        self.voice = voice
        self.language = language
        self.buffer = SentenceBuffer(max_chars)
        self.requests: list[str] = []
        self.chars = 0
        self.failed = False  # after an error, further text is dropped; the stop still answers


class WyomingConnection(AsyncEventHandler):
    """One client's conversation; see the module docstring."""

    def __init__(self, server: WyomingServer, number: int, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:
        super().__init__(reader, writer)
        self._server = server
        self.name = f"wy{number}"
        self._ids = (f"{self.name}-{k}" for k in itertools.count(1))
        self._loop = asyncio.get_running_loop()
        self._outbox: asyncio.Queue[tuple[str, Any, Any]] = asyncio.Queue()
        self._segments: dict[str, _Segment] = {}
        self._open: dict[str, asyncio.Future[OutEvent]] = {}  # request id -> its end event
        self._one_shot: set[str] = set()
        self._stream: _Stream | None = None
        self._audio = ConnectionAudio(self, server.engine.sample_rate)
        self._broken = False

    # --- reading ---

    async def run(self) -> None:
        peer = self.writer.get_extra_info("peername")
        writer_task = asyncio.create_task(self._write_loop(), name=f"chatterd.wyoming.{self.name}.write")
        try:
            if not self._server.admit(self):
                limit = self._server.config.max_connections
                _LOGGER.warning("wyoming: refusing %s: %d clients already connected", peer, limit)
                self._error(ErrorCode.TOO_MANY_CONNECTIONS, f"{limit} clients are connected already; try again later")
                return
            _LOGGER.info("wyoming: %s connected (%s)", self.name, peer)
            while not self._broken:
                event = await self._read()
                if event is None:
                    break
                if not await self.handle_event(event):
                    break
        finally:
            self._server.release(self)
            await self.disconnect()
            self.post(("close", None, None))
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer_task, 2.0)
            self.writer.close()

    async def _read(self) -> WyomingEvent | None:
        """The next event; a malformed one is answered with an error and skipped. None at the end."""
        while True:
            try:
                event = await async_read_event(self.reader)
            except (KeyError, TypeError, AttributeError) as exc:  # a header without "type", odd lengths
                self._error(ErrorCode.MALFORMED_EVENT, f"malformed event: {type(exc).__name__}: {exc}")
                continue
            except (ConnectionError, asyncio.IncompleteReadError):
                return None
            if event is not None:
                return event
            if self.reader.at_eof():
                return None
            # The library reads a line it cannot parse (bad JSON, a line over the reader's limit) as None.
            self._error(ErrorCode.MALFORMED_EVENT, "malformed event: not a JSON event header")

    async def handle_event(self, event: WyomingEvent) -> bool:
        try:
            if Describe.is_type(event.type):
                self.post(("event", None, self._server.info_event))
            elif Ping.is_type(event.type):
                self.post(("event", None, Pong(text=Ping.from_event(event).text).event()))
            elif Synthesize.is_type(event.type):
                self._synthesize(event)
            elif SynthesizeStart.is_type(event.type):
                self._start(event)
            elif SynthesizeChunk.is_type(event.type):
                self._chunk(event)
            elif SynthesizeStop.is_type(event.type):
                self._stop()
            else:
                _LOGGER.debug("wyoming: %s: ignoring a %r event", self.name, event.type)
        except BadRequest as exc:
            _LOGGER.warning("wyoming: %s: bad %s event: %s: %s", self.name, event.type, exc.code, exc.message)
            self._error(exc.code, exc.message)
        return True

    # --- the conversation ---

    def _synthesize(self, event: WyomingEvent) -> None:
        if self._stream is not None:
            return  # the compatibility copy of a stream's whole text: already being spoken
        try:
            text = _text_of(event.data, "synthesize")
            voice, language = self._voice(event.data)
            request_id = next(self._ids)
            self._one_shot.add(request_id)
            self._submit(request_id, clean_text(text, self._server.limits), voice, language, continuation=False)
        except BadRequest as exc:
            self._error(exc.code, exc.message)
            self._post_empty_segment()

    def _start(self, event: WyomingEvent) -> None:
        if self._stream is not None:
            raise BadRequest(
                ErrorCode.UNEXPECTED_EVENT, "synthesize-start inside an open stream (send synthesize-stop first)"
            )
        stream = _Stream(None, None, self._server.limits.max_sentence_chars)
        self._stream = stream
        stream.voice, stream.language = self._voice(event.data)  # a bad voice fails the stream, not the protocol
        problem = self._server.service.check(stream.voice, stream.language)
        if problem is not None:
            stream.failed = True
            raise BadRequest(*problem)

    def _chunk(self, event: WyomingEvent) -> None:
        stream = self._stream
        if stream is None:
            raise BadRequest(
                ErrorCode.UNEXPECTED_EVENT, "synthesize-chunk outside a stream (send synthesize-start first)"
            )
        text = _text_of(event.data, "synthesize-chunk")
        if stream.failed:
            return
        stream.chars += len(text)
        limit = self._server.limits.max_text_chars
        if stream.chars > limit:
            stream.failed = True
            raise BadRequest(
                ErrorCode.TEXT_TOO_LONG,
                f"the stream's text has more than {limit} characters (speech.max_text_chars); the rest is dropped",
            )
        for sentence in stream.buffer.add(text):
            self._stream_sentence(stream, sentence)

    def _stop(self) -> None:
        stream = self._stream
        if stream is None:
            raise BadRequest(
                ErrorCode.UNEXPECTED_EVENT, "synthesize-stop outside a stream (send synthesize-start first)"
            )
        if not stream.failed:
            for sentence in stream.buffer.flush():
                self._stream_sentence(stream, sentence)
        self._stream = None
        ends = [self._open[r] for r in stream.requests if r in self._open]
        task = asyncio.create_task(self._stopped_after(ends), name=f"chatterd.wyoming.{self.name}.stream")
        self._server.track(task)

    async def _stopped_after(self, ends: list[asyncio.Future[OutEvent]]) -> None:
        await asyncio.gather(*ends, return_exceptions=True)
        self.post(("event", None, SynthesizeStopped().event()))

    def _stream_sentence(self, stream: _Stream, sentence: str) -> None:
        try:
            text = clean_text(sentence, self._server.limits)
        except BadRequest:
            return  # nothing speakable in this piece (punctuation between control characters, say)
        request_id = next(self._ids)
        stream.requests.append(request_id)
        self._submit(request_id, text, stream.voice, stream.language, continuation=len(stream.requests) > 1)

    def _submit(self, request_id: str, text: str, voice: str | None, language: str | None, continuation: bool) -> None:
        self._open[request_id] = self._loop.create_future()
        self._server.own(request_id, self)
        request = SayRequest(
            text=text,
            id=request_id,
            voice=voice,
            language=language,
            priority=self._server.priority,
            received_at=time.monotonic(),
            source=SOURCE,
            destination=self._audio,
            continuation=continuation,
        )
        self._server.service.submit(request)  # a rejection comes back through on_event

    def _voice(self, data: dict[str, Any]) -> tuple[str | None, str | None]:
        """The voice name and language of a synthesize(-start) event's `voice` (both optional)."""
        voice = data.get("voice")
        if voice is None:
            return None, None
        if not isinstance(voice, dict):
            raise BadRequest(ErrorCode.WRONG_TYPE, f"'voice' must be an object, got {type(voice).__name__}")
        name, language = voice.get("name"), voice.get("language")
        for key, value in (("name", name), ("language", language)):
            if value is not None and not isinstance(value, str):
                raise BadRequest(ErrorCode.WRONG_TYPE, f"'voice.{key}' must be a string, got {type(value).__name__}")
        return (name or None), check_language(language)

    # --- events of this connection's requests (on the loop) ---

    def on_event(self, event: OutEvent) -> None:
        request_id = event.id
        if request_id is None or not event.is_end:
            return
        if event.event == "error" and event.extras.get("code") == ErrorCode.UNKNOWN_ID.value:
            return  # a stop for an id that had already ended: not this request's end
        if event.event in ("error", "dropped"):
            code = event.extras.get("code") or f"{event.extras.get('reason', 'dropped')}"
            message = str(event.extras.get("message") or f"dropped: {event.extras.get('reason')}")
            self.post(("event", None, WyomingError(text=message, code=str(code)).event()))
        if event.event != "finished":
            segment = self._segments.get(request_id) or _Segment(request_id, self._server.engine.sample_rate, None)
            self.post(("close", segment, request_id))
        future = self._open.pop(request_id, None)
        if future is not None and not future.done():
            future.set_result(event)

    async def disconnect(self) -> None:
        """The client went away: cancel its queued and running requests at once."""
        open_ids = list(self._open)
        for request_id in open_ids:
            self._server.service.cancel(request_id, "disconnected")
        if open_ids:
            _LOGGER.info("wyoming: %s disconnected; cancelled %d request(s)", self.name, len(open_ids))
        else:
            _LOGGER.info("wyoming: %s disconnected", self.name)

    # --- writing (one task per connection keeps the events in order) ---

    def segment(self, request_id: str) -> _Segment:
        segment = _Segment(request_id, self._server.engine.sample_rate, None)
        self._segments[request_id] = segment
        return segment

    def post(self, item: tuple[str, Any, Any]) -> None:
        """Queue something for the writer; safe from any thread."""
        if _on_loop(self._loop):
            self._outbox.put_nowait(item)
        else:
            self._loop.call_soon_threadsafe(self._outbox.put_nowait, item)

    def _error(self, code: ErrorCode, message: str) -> None:
        self.post(("event", None, WyomingError(text=message, code=code.value).event()))

    def _post_empty_segment(self) -> None:
        self.post(("close", _Segment("", self._server.engine.sample_rate, None), "one-shot"))

    async def _write_loop(self) -> None:
        while True:
            kind, segment, value = await self._outbox.get()
            if kind == "close" and segment is None and value is None:
                for pending in self._segments.values():
                    pending.resolve(stopped=True)
                return
            try:
                await self._write_item(kind, segment, value)
            except (ConnectionError, OSError) as exc:
                if not self._broken:
                    _LOGGER.info("wyoming: %s: connection lost while writing: %s", self.name, exc)
                self._broken = True
                if segment is not None:
                    segment.resolve(stopped=True)
                for request_id in list(self._open):
                    self._server.service.cancel(request_id, "disconnected")
                self.reader.feed_eof()

    async def _write_item(self, kind: str, segment: _Segment | None, value: Any) -> None:
        if kind == "event":
            await self._send(value)
            return
        assert segment is not None
        if kind == "chunk":
            if segment.stop_requested or segment.result.done() or self._broken:
                return
            await self._start_segment(segment)
            await self._send(AudioChunk(rate=segment.rate, width=WIDTH, channels=CHANNELS, audio=value).event())
            segment.samples += len(value) // WIDTH
            if segment.first_frame_at is None:
                segment.first_frame_at = at = time.monotonic()
                if segment.on_first_audio is not None:
                    segment.on_first_audio(at)
        elif kind == "end":
            await self._start_segment(segment)
            await self._close_segment(segment)
            segment.resolve(stopped=False)
        elif kind == "stop":
            segment.resolve(stopped=True)
        elif kind == "close":  # the request ended without finishing: close what the client has open
            if value in self._one_shot or value == "one-shot":
                self._one_shot.discard(value)
                await self._start_segment(segment)
            await self._close_segment(segment)
            segment.resolve(stopped=True)
            self._segments.pop(segment.request_id, None)

    async def _start_segment(self, segment: _Segment) -> None:
        if not segment.started and not self._broken:
            segment.started = True
            await self._send(AudioStart(rate=segment.rate, width=WIDTH, channels=CHANNELS).event())

    async def _close_segment(self, segment: _Segment) -> None:
        if segment.started and not segment.closed and not self._broken:
            segment.closed = True
            await self._send(AudioStop().event())

    async def _send(self, event: WyomingEvent) -> None:
        if not self._broken:
            await async_write_event(event, self.writer)


def announced_host(listen_host: str | None) -> str | None:
    """The IPv4 address to announce for a server listening on `listen_host`: that address when the
    server listens on one address only, None (the machine's own outgoing address) for all of them
    or for a name."""
    if not listen_host:
        return None
    try:
        address = ipaddress.ip_address(listen_host)
    except ValueError:
        return None  # a host name: the library finds the machine's address
    if address.version != 4 or address.is_unspecified:
        return None
    return str(address)


def _on_loop(loop: asyncio.AbstractEventLoop) -> bool:
    """True when called on `loop`'s own thread."""
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False


def _text_of(data: dict[str, Any], event: str) -> str:
    if "text" not in data:
        raise BadRequest(ErrorCode.MISSING_FIELD, f"{event} needs 'text'")
    text = data["text"]
    if not isinstance(text, str):
        raise BadRequest(ErrorCode.WRONG_TYPE, f"{event}'s 'text' must be a string, got {type(text).__name__}")
    return text


# --- the server -----------------------------------------------------------------------------


class WyomingServer:
    """Serves Wyoming clients on `config.uri` until cancelled; see the module docstring."""

    def __init__(
        self,
        config: WyomingConfig,
        service: SpeechService,
        engine: SpeechEngine,
        limits: SpeechConfig,
        site: str = "default",
    ) -> None:
        self.config = config
        self.service = service
        self.engine = engine
        self.limits = limits
        self.site = site
        self.priority: Priority = "high" if config.priority == "high" else (
            "low" if config.priority == "low" else "normal")
        self.info_event = info_of(engine).event()
        self._server: AsyncServer | None = None
        self._connections: set[WyomingConnection] = set()
        self._owners: dict[str, WyomingConnection] = {}
        self._numbers = itertools.count(1)
        self._tasks: set[asyncio.Task[None]] = set()
        self.ready = asyncio.Event()  # set once the socket listens

    @property
    def clients(self) -> int:
        return len(self._connections)

    def admit(self, connection: WyomingConnection) -> bool:
        if len(self._connections) >= self.config.max_connections:
            return False
        self._connections.add(connection)
        return True

    def release(self, connection: WyomingConnection) -> None:
        self._connections.discard(connection)
        for request_id in [r for r, c in self._owners.items() if c is connection]:
            del self._owners[request_id]

    def own(self, request_id: str, connection: WyomingConnection) -> None:
        self._owners[request_id] = connection

    def track(self, task: asyncio.Task[None]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def on_event(self, event: OutEvent) -> None:
        """Every event the daemon emits passes here; those of Wyoming requests go to their connection."""
        if event.id is None:
            return
        connection = self._owners.get(event.id)
        if connection is None:
            return
        if event.is_end and not (event.event == "error" and event.extras.get("code") == ErrorCode.UNKNOWN_ID.value):
            del self._owners[event.id]
        connection.on_event(event)

    def _handler(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> WyomingConnection:
        return WyomingConnection(self, next(self._numbers), reader, writer)

    async def run(self) -> None:
        """Listen (and announce over zeroconf) until cancelled; then close every connection."""
        server = AsyncServer.from_uri(self.config.uri)
        self._server = server
        # start(), not run(): run() would take over SIGTERM, which belongs to the daemon.
        await server.start(partial(WyomingServer._handler, self))
        zeroconf = await self._announce()
        _LOGGER.info("wyoming: serving TTS on %s (%d voices, languages %s)", self.config.uri,
                     len(self.engine.voices), ", ".join(self.engine.languages))
        self.ready.set()
        try:
            await asyncio.Event().wait()
        finally:
            await server.stop()
            for task in list(self._tasks):
                task.cancel()
            if zeroconf is not None:
                with contextlib.suppress(Exception):
                    await zeroconf.async_close()

    async def _announce(self) -> Any:
        if not self.config.zeroconf:
            return None
        from wyoming.zeroconf import HomeAssistantZeroconf

        uri = urlparse(self.config.uri)
        port = uri.port
        assert port is not None
        name = self.config.zeroconf_name or f"chatterd-{self.site}"
        host = announced_host(uri.hostname)
        if host is not None and ipaddress.ip_address(host).is_loopback:
            _LOGGER.warning("wyoming: %s listens on the loopback interface only; zeroconf announces %s, which "
                            "other machines cannot reach (listen on tcp://0.0.0.0:%d to be found)",
                            self.config.uri, host, port)
        try:
            announcer = HomeAssistantZeroconf(port=port, name=name, host=host)
            await announcer.register_server()
        except OSError as exc:  # no multicast route (containers, no network): serve anyway
            _LOGGER.warning("wyoming: zeroconf announcement failed (%s); add the server by host and port", exc)
            return None
        _LOGGER.info("wyoming: announced %r as _wyoming._tcp.local. on %s:%d", name, announcer.host, port)
        return announcer._aiozc
