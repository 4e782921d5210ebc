"""Admission and the queue: which requests get in, in what order, and which are pushed out.

A request is checked in this order, and the first failure is its only event:
1. rate limit (`error` rate_limited): per `request.client`, else one bucket per source (mqtt,
   hermes, wyoming); a `continuation` (a later sentence of an admitted Wyoming stream) is not
   counted again;
2. voice and language (`error` unknown_voice / unsupported_language, naming the known ones); a
   locale such as `en_US` or `pt-BR` is spoken in its language (`en`, `pt`) when the model has
   no such regional code itself;
3. duplicate id (`error` duplicate_id) against the queue and the request being spoken;
4. with `dedupe`, a request for the local speaker whose text, voice and language equal a queued
   one's is dropped (`dropped`, reason duplicate, `duplicate_of`); interrupts, and requests whose
   audio goes back to a client, are never deduplicated (each client wants its own audio);
5. a full queue evicts the newest request of a lower rank (`dropped` queue_full) or drops the
   newcomer.

Order: high before normal before low, first come first served within a priority. A request with
`interrupt: true` ranks above everything and goes to the head of the queue (the worker cuts the
current one). Wyoming requests are interactive (a voice assistant's answer) and come in as
`integrations.wyoming.priority` (high by default): they go ahead of every queued normal and low
announcement, wait at most for the utterance being spoken, and are never evicted by them.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import deque
from collections.abc import Callable, Iterator

from daemon.config import SpeechConfig
from daemon.engine import SpeechEngine
from daemon.events import Dropped, ErrorCode, OutEvent, Queued, error_event
from daemon.messages import PRIORITIES, SayRequest
from daemon.ratelimit import RateLimiter

_LOGGER = logging.getLogger(__name__)

EmitFn = Callable[[OutEvent], None]


def log_outcome(level: int, request_id: str | None, outcome: str, **fields: object) -> None:
    """The one log line per request: `request <id> <outcome>: key=value ...` (None values omitted)."""
    details = " ".join(f"{key}={value}" for key, value in fields.items() if value is not None)
    logging.getLogger("daemon.speech").log(level, "request %s %s: %s", request_id, outcome, details)


class QueueFull(Exception):
    """The queue holds `maxsize` requests, none of which ranks below the newcomer."""


def rank(request: SayRequest) -> int:
    """3 for an interrupt, then 2/1/0 for high/normal/low."""
    return 3 if request.interrupt else 2 - PRIORITIES.index(request.priority)


class RequestQueue:
    """Bounded priority queue of SayRequests; FIFO within a priority, interrupts at the very front."""

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self._levels: dict[str, deque[SayRequest]] = {p: deque() for p in PRIORITIES}

    def __len__(self) -> int:
        return sum(len(level) for level in self._levels.values())

    def __contains__(self, request_id: object) -> bool:
        return any(r.id == request_id for r in self)

    def __iter__(self) -> Iterator[SayRequest]:
        for priority in PRIORITIES:
            yield from self._levels[priority]

    def push(self, request: SayRequest) -> SayRequest | None:
        """Add a request; returns the request it evicted, or raises QueueFull."""
        evicted = None
        if len(self) >= self.maxsize:
            evicted = self._victim(request)
            if evicted is None:
                raise QueueFull
            self._levels[evicted.priority].remove(evicted)
        if request.interrupt:
            self._levels[PRIORITIES[0]].appendleft(request)
        else:
            self._levels[request.priority].append(request)
        return evicted

    def _victim(self, newcomer: SayRequest) -> SayRequest | None:
        for priority in reversed(PRIORITIES):
            level = self._levels[priority]
            if level:
                return level[-1] if rank(level[-1]) < rank(newcomer) else None
        return None

    def position(self, request_id: str) -> int:
        """0 = spoken next."""
        return next(i for i, r in enumerate(self) if r.id == request_id)

    def pop(self) -> SayRequest | None:
        for priority in PRIORITIES:
            if self._levels[priority]:
                return self._levels[priority].popleft()
        return None

    def remove(self, request_id: str) -> SayRequest | None:
        for level in self._levels.values():
            for request in level:
                if request.id == request_id:
                    level.remove(request)
                    return request
        return None

    def clear(self) -> list[SayRequest]:
        requests = list(self)
        for level in self._levels.values():
            level.clear()
        return requests


class Admission:
    """The checks of the module docstring in front of one RequestQueue; events go to `emit`."""

    def __init__(
        self,
        engine: SpeechEngine,
        config: SpeechConfig,
        emit: EmitFn,
        voice_of: Callable[[SayRequest], str],
    ) -> None:
        self.queue = RequestQueue(config.queue_size)
        self._engine = engine
        self._config = config
        self._emit = emit
        self._voice_of = voice_of
        self._rate_limiter = RateLimiter(config.rate_limit_per_s, config.rate_limit_burst)

    def admit(self, request: SayRequest, speaking: SayRequest | None) -> bool:
        """Queue `request` (emits `queued`, maybe `dropped` for an evicted one) or reject it; True if queued."""
        if not request.continuation and not self._rate_limiter.allow(request.client or request.source):
            sender = f"client {request.client!r}" if request.client else f"{request.source} senders without 'client'"
            return self.reject(
                request,
                ErrorCode.RATE_LIMITED,
                f"more than {self._config.rate_limit_per_s:g} requests/s (bursts of "
                f"{self._config.rate_limit_burst}) from {sender} (speech.rate_limit_per_s)",
            )
        problem = self.check_voice_and_language(request.voice, request.language)
        if problem is not None:
            return self.reject(request, *problem)
        language = self.resolve_language(request.language)
        if language != request.language:
            request = dataclasses.replace(request, language=language)
        if request.id in self.queue or (speaking is not None and speaking.id == request.id):
            return self.reject(
                request, ErrorCode.DUPLICATE_ID, f"a request with id {request.id!r} is already queued or speaking"
            )
        if self._config.dedupe and not request.interrupt and request.destination is None:
            twin = self._twin_of(request)
            if twin is not None:
                self._emit(Dropped(request.id, reason="duplicate", duplicate_of=twin.id))
                _LOGGER.info("request %s dropped: same text as queued request %s", request.id, twin.id)
                return False
        try:
            evicted = self.queue.push(request)
        except QueueFull:
            self._emit(Dropped(request.id, reason="queue_full"))
            log_outcome(logging.WARNING, request.id, "dropped", reason="queue_full", queued=len(self.queue))
            return False
        self._emit(Queued(request.id, position=self.queue.position(request.id), source=request.source))
        if evicted is not None:
            self._emit(Dropped(evicted.id, reason="queue_full"))
            log_outcome(logging.WARNING, evicted.id, "dropped", reason="queue_full", evicted_by=request.id)
        return True

    def check_voice_and_language(self, voice: str | None, language: str | None) -> tuple[ErrorCode, str] | None:
        """None if the engine knows `voice` and speaks `language` (None = the defaults), else why not."""
        if voice is not None and voice not in self._engine.voices:
            known = ", ".join(self._engine.voices)
            return ErrorCode.UNKNOWN_VOICE, f"unknown voice {voice!r}; known voices: {known}"
        if language is not None and self.resolve_language(language) is None:
            return (
                ErrorCode.UNSUPPORTED_LANGUAGE,
                f"unsupported language {language!r} for the {self._engine.model} model; "
                f"supported: {', '.join(self._engine.languages)}",
            )
        return None

    def resolve_language(self, language: str | None) -> str | None:
        """The engine's code for `language` (itself, or the language of a locale); None if it has none."""
        if language is None or language in self._engine.languages:
            return language
        base = language.replace("_", "-").split("-")[0].lower()
        return base if base in self._engine.languages else None

    def _twin_of(self, request: SayRequest) -> SayRequest | None:
        voice = self._voice_of(request)
        return next(
            (
                r
                for r in self.queue
                if r.destination is None
                and r.text == request.text
                and r.language == request.language
                and self._voice_of(r) == voice
            ),
            None,
        )

    def reject(self, request: SayRequest, code: ErrorCode, message: str) -> bool:
        self._emit(error_event(request.id, code, message))
        log_outcome(logging.WARNING, request.id, "error", code=code.value, message=repr(message))
        return False
