"""StreamingTTS: text in, float32 PCM chunks out, while T3 is still decoding.

    engine = StreamingTTS.load(config)   # resolve + validate the checkpoint, load weights
    engine.warm_up()                     # run (and compile) every shape the hot path uses
    for pcm in engine.stream("The front door is open.", voice=None, cancel=event):
        ...                              # float32 mono at engine.sample_rate

The engine is single-tenant: one request synthesises at a time (the daemon serialises requests).
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
import time
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from tts.checkpoint import is_random_checkpoint, resolve_checkpoint
from tts.config import TTSConfig
from tts.errors import CheckpointError, SynthesisError, TTSError
from tts.flow_estimator import FlowEstimator
from tts.t3 import PrefixKV, SamplingParams, T3Decoder, cast_for_decoding
from tts.text import normalize, token_budget
from tts.vocoder import LOOKAHEAD, SAMPLE_RATE, StreamingVocoder, window_frames
from tts.voices import (
    DEFAULT_VOICE,
    Voice,
    VoiceBank,
    build_voice,
    conditionals_from_wav,
    load_conds_file,
)

log = logging.getLogger(__name__)

S3GEN_VOCAB = 6561
# T3's conditioning prefix: speaker embedding (1) + perceiver-resampled prompt (32) + emotion (1).
COND_POSITIONS = 34
# S3Gen buffers that upstream's checkpoints do not store (recomputed at construction).
_S3GEN_OPTIONAL_KEYS = ("tokenizer._mel_filters", "tokenizer.window", "trim_fade")


@dataclass
class SynthesisStats:
    """Per-request timings, filled in by `stream` (all seconds, wall clock)."""

    text_chars: int = 0
    tokens: int = 0
    audio_samples: int = 0
    t3_s: float = 0.0
    flow_s: float = 0.0
    hift_s: float = 0.0
    first_chunk_s: float | None = None
    chunk_times: list[tuple[float, int]] = field(default_factory=list)  # (time since start, samples)
    chunk_tokens: list[int] = field(default_factory=list)  # the schedule's size for each chunk
    stopped_by_guard: bool = False


class ChunkSchedule:
    """Token counts per chunk, sized from the audio queued ahead of playback.

    The first chunk is small, for first audio. After each chunk the schedule updates a model of the
    player's buffer (playback starts with the first chunk and stalls when the buffer runs dry) and
    of the synthesis rate (seconds per token between chunk emissions, smoothed). The next chunk is
    as large as the buffer covers: n tokens are ready in about n * rate seconds, so
    n = buffer * `headroom` / rate, clamped to `maximum`; larger chunks amortise the voice prompt and
    context that every vocoder call repeats. When the buffer cannot cover `minimum` tokens:
    - synthesis faster than playback: `minimum` (the shortest stall; the buffer then builds up);
    - synthesis slower than playback: grow by `growth` (fewer, larger calls finish soonest).
    Without timings (`emitted` never called) it is geometric: first, minimum, minimum * growth, ...
    `queued_s`: audio already queued ahead of playback when the request starts (the previous
    sentence's tail); it plays while the first chunk is synthesised.
    """

    def __init__(self, first: int, minimum: int, growth: float, maximum: int, headroom: float = 0.5,
                 queued_s: float = 0.0) -> None:
        self.first = first
        self.minimum = minimum
        self.growth = growth
        self.maximum = maximum
        self.headroom = headroom
        self.sizes: list[int] = []  # every size handed out, in order
        self.buffered_s = max(0.0, queued_s)  # audio queued ahead of playback after the last chunk (modelled)
        self._last_at = 0.0
        self._rate: float | None = None  # synthesis seconds per token, smoothed
        self._tokens = 0
        self._audio_s = 0.0

    def next(self) -> int:
        if not self.sizes:
            size = self.first
        elif self._rate is not None and (fit := int(self.buffered_s * self.headroom / self._rate)) >= self.minimum:
            size = min(self.maximum, fit)
        elif self._rate is not None and self._rate < self._audio_s / self._tokens:
            size = self.minimum
        elif len(self.sizes) == 1:
            size = min(self.maximum, self.minimum)
        else:
            size = min(self.maximum, max(self.minimum, self.sizes[-1] + 1, int(self.sizes[-1] * self.growth)))
        self.sizes.append(size)
        return size

    def emitted(self, tokens: int, audio_s: float, at: float) -> None:
        """Record a chunk of `tokens` tokens and `audio_s` seconds of audio handed to the player `at`
        seconds after the request started."""
        elapsed = at - self._last_at
        self._last_at = at
        # Playback starts with the first chunk (or plays what was queued before it) and stalls,
        # rather than going negative, when dry.
        self.buffered_s = max(0.0, self.buffered_s - elapsed) + audio_s
        if tokens > 0:
            self._tokens += tokens
            self._audio_s += audio_s
            rate = elapsed / tokens
            self._rate = rate if self._rate is None else 0.5 * (self._rate + rate)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TTSError("tts.device is cuda but no CUDA device is available")
    return device


def _cpu_has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def pick_dtype(name: str, device: torch.device) -> tuple[torch.dtype, bool]:
    """(T3 compute dtype, int8 weights?). auto: bf16 on CUDA with bf16 support, fp16 on older
    CUDA, bf16 on CPUs with native bf16 matmul, fp32 elsewhere."""
    if name == "int8":
        if device.type != "cpu":
            raise TTSError("tts.dtype int8 is a CPU path; use bfloat16 or float16 on CUDA")
        return torch.float32, True
    if name != "auto":
        return getattr(torch, name), False
    if device.type == "cuda":
        return (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16), False
    return (torch.bfloat16 if _cpu_has_bf16() else torch.float32), False


class StreamingTTS:
    sample_rate = SAMPLE_RATE

    def __init__(self, config: TTSConfig, *, t3: Any, s3gen: Any,
                 tokenizer: object, voices: VoiceBank, device: torch.device, dtype: torch.dtype,
                 int8: bool, checkpoint_dir: Path) -> None:
        # `t3`, `s3gen`: upstream's chatterbox T3 and S3Gen modules (untyped, so Any at this boundary).
        self.config = config
        self.t3 = t3
        self.s3gen = s3gen
        self.tokenizer = tokenizer
        self.voice_bank = voices
        self.device = device
        self.dtype = dtype
        self.checkpoint_dir = checkpoint_dir
        self.random_weights = is_random_checkpoint(checkpoint_dir)
        max_prefix = COND_POSITIONS + 2 + 2 + config.max_text_tokens  # + BOS pair + start/stop text
        self.decoder = T3Decoder(t3, dtype=dtype, max_len=max_prefix + config.max_speech_tokens,
                                 int8=int8, compile=config.compile)
        self.decoder.release_upstream_layers()
        # Each voice's conditioning K/V and its unconditional row's text positions, computed once (at
        # load for the configured voices): a request's prefill computes its text in one CFG row only.
        self._prefix_kv: dict[str, tuple[Voice, PrefixKV]] = {}
        for voice in voices:
            self.prefix_kv(voice)
        self.flow_estimator = FlowEstimator(s3gen.flow.decoder.estimator, compile=config.compile)
        self.params = SamplingParams(
            temperature=config.temperature, cfg_weight=config.cfg_weight,
            repetition_penalty=config.repetition_penalty, min_p=config.min_p, top_p=config.top_p,
        )
        self._lock = threading.Lock()

    def prefix_kv(self, voice: Voice) -> PrefixKV:
        """The K/V every request of `voice` starts with (computed on first use of a voice added later)."""
        entry = self._prefix_kv.get(voice.name)
        if entry is None or entry[0] is not voice:
            entry = (voice, self.decoder.cache_prefix(voice.cond_emb, self.config.max_text_tokens + 2))
            self._prefix_kv[voice.name] = entry
        return entry[1]

    @property
    def pipelined(self) -> bool:
        """Whether T3 decodes on its own thread (tts.pipeline; auto = on CUDA only)."""
        return self.config.pipeline if self.config.pipeline is not None else self.device.type == "cuda"

    @property
    def voices(self) -> tuple[str, ...]:
        return self.voice_bank.names

    # -- loading ------------------------------------------------------------------------------------

    @classmethod
    def load(cls, config: TTSConfig) -> StreamingTTS:
        """Resolve the checkpoint (hub id or directory), load and validate every part."""
        from chatterbox.models.s3gen import S3Gen
        from chatterbox.models.t3 import T3
        from chatterbox.models.tokenizers import EnTokenizer
        from chatterbox.models.voice_encoder import VoiceEncoder

        if config.threads:
            torch.set_num_threads(config.threads)
        if config.cache_dir:
            # Inductor's compiled kernels survive restarts here instead of under /tmp.
            os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR",
                                  str(Path(config.cache_dir).resolve() / "inductor"))
        device = pick_device(config.device)
        dtype, int8 = pick_dtype(config.dtype, device)
        ckpt = resolve_checkpoint(config.checkpoint)
        t0 = time.perf_counter()

        t3 = T3()
        _load_state(t3, ckpt / "t3_cfg.safetensors", strict=True)
        s3gen = S3Gen()
        _load_state(s3gen, ckpt / "s3gen.safetensors", strict=False)
        ve = VoiceEncoder()
        _load_state(ve, ckpt / "ve.safetensors", strict=True)
        try:
            tokenizer = EnTokenizer(str(ckpt / "tokenizer.json"))
        except Exception as exc:  # tokenizers raises plain Exception subclasses
            raise CheckpointError(f"{ckpt / 'tokenizer.json'}: not a usable tokenizer ({exc})") from exc
        t3.to(device).eval()
        s3gen.to(device).eval()
        ve.to(device).eval()

        voices = {DEFAULT_VOICE: build_voice(DEFAULT_VOICE, load_conds_file(ckpt / "conds.pt"), t3,
                                             exaggeration=config.exaggeration,
                                             prompt_tokens=config.prompt_tokens, device=device)}
        cache_dir = Path(config.cache_dir) if config.cache_dir else None
        for name, wav in config.voices.items():
            conds = conditionals_from_wav(Path(wav), ve=ve, s3gen=s3gen,
                                          t3_prompt_len=t3.hp.speech_cond_prompt_len,
                                          cache_dir=cache_dir, model_id=str(ckpt))
            voices[name] = build_voice(name, conds, t3, exaggeration=config.exaggeration,
                                       prompt_tokens=config.prompt_tokens, device=device)
        del ve  # only needed to prepare voices

        # Conditioning ran in fp32 above; now the decoding weights take their serving dtype.
        if not int8 and dtype != torch.float32:
            cast_for_decoding(t3, dtype)
        engine = cls(config, t3=t3, s3gen=s3gen, tokenizer=tokenizer, voices=VoiceBank(voices),
                     device=device, dtype=dtype, int8=int8, checkpoint_dir=ckpt)
        log.info("loaded %s in %.1f s: device %s, T3 %s%s, voices %s%s", ckpt, time.perf_counter() - t0,
                 device, "int8" if int8 else str(dtype).removeprefix("torch."),
                 ", compiled" if config.compile else "", ", ".join(engine.voices),
                 " (RANDOM WEIGHTS: output is noise)" if engine.random_weights else "")
        return engine

    # -- serving ------------------------------------------------------------------------------------

    def warm_up(self) -> float:
        """Run every shape the hot path uses before serving; returns the seconds it took."""
        t0 = time.perf_counter()
        cfg = self.config
        if cfg.compile:
            # Every KV bucket from the shortest possible prefix to a full cache.
            shortest = COND_POSITIONS + 2 + 2 + 1
            n = self.decoder.warm_up(shortest, self.decoder.max_len - shortest - 1, self.params)
            log.info("warm-up: %d T3 step graphs compiled", n)
            frames = [n for voice in self.voice_bank
                      for n in window_frames(voice.prompt, cfg.context_tokens, cfg.max_chunk_tokens)]
            n = self.flow_estimator.warm_up(frames, rows=2 if cfg.flow_cfg_rate > 0 else 1, device=self.device)
            log.info("warm-up: flow estimator compiled and run at %d window lengths", n)
        # One short request end to end: prefill, steps, two vocoder chunks, final flush.
        stats = SynthesisStats()
        words = "Ready to speak now."
        for _ in self.stream(words, max_tokens=cfg.first_chunk_tokens + cfg.chunk_tokens + LOOKAHEAD,
                             stats=stats):
            pass
        elapsed = time.perf_counter() - t0
        log.info("warm-up done in %.1f s", elapsed)
        return elapsed

    def stream(self, text: str, voice: str | None = None, cancel: threading.Event | None = None, *,
               max_tokens: int | None = None, stats: SynthesisStats | None = None,
               seed: int | None = None, queued_s: float = 0.0) -> Iterator[npt.NDArray[np.float32]]:
        """Yield float32 PCM chunks for `text` as they are synthesised.

        `queued_s`: seconds of audio the player still has queued from earlier text (the previous
        sentence); the chunk schedule counts it as buffer, so chunks can grow sooner.
        Raises UnknownVoice before any work for an unknown voice, SynthesisError when synthesis
        fails. Checks `cancel` between chunks; a cancelled stream simply ends.
        """
        selected = self.voice_bank.get(voice)  # raises UnknownVoice
        clean = normalize(text)
        if not clean:
            raise SynthesisError("nothing to say: the text is empty after normalisation")
        budget = token_budget(clean, self.config.max_tokens_per_char, self.config.max_speech_tokens)
        if max_tokens is not None:
            budget = min(budget, max_tokens)
        stats = stats if stats is not None else SynthesisStats()
        stats.text_chars = len(clean)
        with self._lock:
            try:
                yield from self._stream(clean, selected, budget, cancel, stats, seed, queued_s)
            except (TTSError, GeneratorExit):
                raise
            except torch.cuda.OutOfMemoryError as exc:
                torch.cuda.empty_cache()
                raise SynthesisError("out of GPU memory during synthesis") from exc
            except (RuntimeError, ValueError, IndexError) as exc:
                raise SynthesisError(f"synthesis failed: {exc}") from exc

    def _stream(self, text: str, voice: Voice, budget: int, cancel: threading.Event | None,
                stats: SynthesisStats, seed: int | None, queued_s: float) -> Iterator[npt.NDArray[np.float32]]:
        cfg = self.config
        start = time.perf_counter()
        seed = seed if seed is not None else cfg.seed
        generator = torch.Generator(device=self.device)
        generator.manual_seed(seed if seed is not None else int.from_bytes(os.urandom(6), "little"))
        with torch.inference_mode():
            text_ids = self.tokenizer.text_to_tokens(text).to(self.device)  # type: ignore[attr-defined]
            sot, eot = self.t3.hp.start_text_token, self.t3.hp.stop_text_token
            text_ids = torch.nn.functional.pad(torch.nn.functional.pad(text_ids, (1, 0), value=sot), (0, 1),
                                               value=eot)
            if text_ids.shape[1] > self.config.max_text_tokens + 2:
                raise SynthesisError(
                    f"text of {text_ids.shape[1] - 2} tokens is longer than tts.max_text_tokens "
                    f"({self.config.max_text_tokens}); split it into sentences"
                )
            prefix = self.decoder.prefix_embeds(voice.cond_emb, text_ids.long())
        vocoder = StreamingVocoder(self.s3gen, voice.prompt, max_tokens=budget, flow_steps=cfg.flow_steps,
                                   context_tokens=cfg.context_tokens, crossfade_ms=cfg.crossfade_ms,
                                   generator=generator, flow_cfg_rate=cfg.flow_cfg_rate,
                                   estimator=self.flow_estimator)
        schedule = ChunkSchedule(cfg.first_chunk_tokens, cfg.chunk_tokens, cfg.chunk_growth,
                                 cfg.max_chunk_tokens, cfg.chunk_headroom, queued_s=queued_s)
        tokens: list[int] = []
        produced = 0
        target = schedule.next()
        halt = threading.Event()  # set when the consumer is done early: the decoder stops too
        try:
            for block in self._decoded_blocks(prefix, self.prefix_kv(voice), budget, generator, halt,
                                              cancel, stats):
                produced += len(block)
                # Ids the vocoder cannot take (start/pad specials) are dropped, as upstream does.
                tokens.extend(t for t in block if t < S3GEN_VOCAB)
                while vocoder.ready(len(tokens), target):
                    if cancel is not None and cancel.is_set():
                        return
                    pcm = vocoder.process(tokens, chunk=target)
                    chunk = self._emit(pcm, stats, start, vocoder)
                    schedule.emitted(target, len(pcm) / SAMPLE_RATE, stats.chunk_times[-1][0])
                    stats.chunk_tokens.append(target)
                    yield chunk
                    target = schedule.next()
                if cancel is not None and cancel.is_set():
                    return
        finally:
            halt.set()
        stats.tokens = len(tokens)
        stats.stopped_by_guard = produced >= budget
        if cancel is not None and cancel.is_set():
            return
        pcm = vocoder.process(tokens, final=True)
        if len(pcm):
            yield self._emit(pcm, stats, start, vocoder)

    def _decoded_blocks(self, prefix: torch.Tensor, cached: PrefixKV, budget: int, generator: torch.Generator,
                        halt: threading.Event, cancel: threading.Event | None,
                        stats: SynthesisStats) -> Iterator[list[int]]:
        """T3's token blocks, the first one exactly what the first chunk needs; same tokens either way.

        Inline, or (tts.pipeline) the first block inline and the rest on a thread that keeps decoding
        while the caller vocodes. The first block and the first chunk run alone, with every core:
        they are what first audio waits for, so the thread starts only when the caller asks for the
        second block. Ends early once `halt` or `cancel` is set.
        """
        stop = _AnyEvent(halt, cancel)
        blocks = _timed(self.decoder.generate(prefix, budget, self.params, generator=generator, cancel=stop,
                                              first_block=self.config.first_chunk_tokens + LOOKAHEAD,
                                              cached=cached), stats)
        if not self.pipelined:
            yield from blocks
            return
        first = next(blocks, None)
        if first is None:
            return
        try:
            yield first
        except GeneratorExit:
            blocks.close()  # releases the decoder
            raise
        handoff: queue.Queue[list[int] | BaseException | None] = queue.Queue()
        side_stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None  # type: ignore[no-untyped-call]

        def produce() -> None:
            try:
                with torch.cuda.stream(side_stream) if side_stream is not None else contextlib.nullcontext():
                    for block in blocks:
                        handoff.put(block)
                handoff.put(None)
            except BaseException as exc:  # handed to the consumer, which raises it
                handoff.put(exc)

        worker = threading.Thread(target=produce, name="chatterd-t3", daemon=True)
        worker.start()
        try:
            while (item := handoff.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            halt.set()
            worker.join()

    @staticmethod
    def _emit(pcm: npt.NDArray[np.float32], stats: SynthesisStats, start: float,
              vocoder: StreamingVocoder) -> npt.NDArray[np.float32]:
        now = time.perf_counter() - start
        if stats.first_chunk_s is None:
            stats.first_chunk_s = now
        stats.chunk_times.append((now, len(pcm)))
        stats.audio_samples += len(pcm)
        stats.flow_s, stats.hift_s = vocoder.flow_s, vocoder.hift_s
        return np.clip(pcm, -1.0, 1.0).astype(np.float32, copy=False)


def _timed(blocks: Generator[list[int], None, None], stats: SynthesisStats) -> Generator[list[int], None, None]:
    """Pass T3's blocks through, adding the time spent producing them to stats.t3_s."""
    try:
        while True:
            t0 = time.perf_counter()
            block = next(blocks, None)
            stats.t3_s += time.perf_counter() - t0
            if block is None:
                return
            yield block
    finally:
        blocks.close()  # an early exit releases the decoder now, not at garbage collection


class _AnyEvent:
    """Looks like a threading.Event to the decoder's cancel check; set when any of its events is."""

    def __init__(self, *events: threading.Event | None) -> None:
        self._events = [e for e in events if e is not None]

    def is_set(self) -> bool:
        return any(e.is_set() for e in self._events)


def _load_state(module: torch.nn.Module, path: Path, *, strict: bool) -> None:
    from safetensors.torch import load_file

    try:
        state: dict[str, Any] = load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types
        raise CheckpointError(f"{path}: cannot read weights ({exc})") from exc
    if "model" in state:  # some T3 exports nest the state dict
        state = state["model"][0]
    try:
        missing, unexpected = module.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatch
        raise CheckpointError(f"{path}: weights do not fit the model: {exc}") from exc
    missing = [k for k in missing if not k.endswith(_S3GEN_OPTIONAL_KEYS)]
    if missing or (strict and unexpected):
        raise CheckpointError(
            f"{path}: weights do not match the model (missing {len(missing)}: {missing[:3]}, "
            f"unexpected {len(unexpected)}: {unexpected[:3]})"
        )
