"""StreamingTTS: text in, float32 PCM chunks out, while T3 is still decoding.

    engine = StreamingTTS.load(config)   # tts.model picks the family; resolve, validate, load
    engine.warm_up()                     # run (and compile) every shape the hot path uses
    for pcm in engine.stream("The front door is open.", voice=None, language=None, cancel=event):
        ...                              # float32 mono at engine.sample_rate
    engine.voices, engine.languages, engine.identity()

One engine serves every family (tts.families): the decoder, the streaming vocoder and the chunk
schedule read the family's description. The engine is single-tenant: one request synthesises at a
time (the daemon serialises requests).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import torch

from tts.checkpoint import checkpoint_files
from tts.config import TTSConfig
from tts.errors import OutOfMemory, SynthesisError, TTSError, UnsupportedLanguage
from tts.families import S3GEN_VOCAB
from tts.flow_estimator import FlowEstimator, bucket
from tts.loading import LoadedModel, load_model, pick_flow_runtime, pick_vocoder_dtype
from tts.schedule import ChunkSchedule
from tts.t3 import Block, PrefixKV, SamplingParams, T3Decoder, prefix_length
from tts.text import normalize, strip_tags, token_budget
from tts.vocoder import (
    HIFT_BUCKET_MELS,
    LOOKAHEAD,
    MEL_PER_TOKEN,
    SAMPLE_RATE,
    StreamingVocoder,
    TokenEncoder,
    hift_length,
    prepare_hift,
    window_frames,
)
from tts.voices import Voice

log = logging.getLogger(__name__)

# Settings that change neither the audio nor its timing: not part of `identity()`. (Pipelined
# decoding gives inline's tokens, whatever the thread counts; max_text_tokens only sizes the cache.)
_NOT_AUDIBLE = frozenset({"cache_dir", "threads", "compile", "voices", "checkpoint", "default_voice", "pipeline",
                          "max_text_tokens"})
# Warm-up progress: (graphs or shapes done, total, what).
Progress = Callable[[int, int, str], None]


@dataclass
class SynthesisStats:
    """Per-request timings, filled in by `stream` (all seconds, wall clock)."""

    text_chars: int = 0
    tokens: int = 0
    audio_samples: int = 0
    prefill_s: float = 0.0
    t3_s: float = 0.0
    flow_s: float = 0.0
    hift_s: float = 0.0
    first_chunk_s: float | None = None
    chunk_times: list[tuple[float, int]] = field(default_factory=list)  # (time since start, samples)
    chunk_tokens: list[int] = field(default_factory=list)  # the schedule's size for each chunk
    stopped_by_guard: bool = False


class StreamingTTS:
    sample_rate = SAMPLE_RATE

    def __init__(self, config: TTSConfig, model: LoadedModel) -> None:
        self.config = config
        self.loaded = model
        self.family = model.family
        self.t3 = model.t3
        self.s3gen = model.s3gen
        self.tokenizer = model.tokenizer
        self.voice_bank = model.voices
        self.device = model.device
        self.dtype = model.dtype
        self.checkpoint_dir = model.checkpoint_dir
        self.random_weights = model.random_weights
        fam = self.family
        self.default_language = config.language or fam.default_language
        self.resolved = model.settings  # the device profile where the config left a knob null
        self.flow_steps = self.resolved.flow_steps
        self.flow_cfg_rate = self.resolved.flow_cfg_rate
        # The longest text's positions (+ the start/stop text markers), and the longest prefix:
        # conditioning + that text + the BOS embeddings.
        self.max_text_positions = config.max_text_tokens + 2
        max_prefix = prefix_length(fam, model.t3.hp, self.max_text_positions)
        self.decoder = T3Decoder(model.t3, fam, dtype=model.dtype, max_len=max_prefix + config.max_speech_tokens,
                                 quant=model.quant, compile=config.compile)
        self.decoder.release_upstream_layers()
        # Each voice's conditioning K/V (and with CFG its unconditional row's text positions),
        # computed once (at load for the configured voices): a request's prefill starts at its text.
        self._prefix_kv: dict[str, tuple[Voice, PrefixKV]] = {}
        for voice in self.voice_bank:
            self.prefix_kv(voice)
        self.vocoder_dtype = pick_vocoder_dtype(config.vocoder_dtype, model.device)
        # The flow (token encoder, estimator) in torch, or fp32 in ONNX Runtime (tts.onnx_flow).
        self.flow_runtime = pick_flow_runtime(config.flow_runtime, model.device, config.compile)
        onnx = self.flow_runtime == "onnxruntime"
        self.flow_estimator = FlowEstimator(model.s3gen.flow.decoder.estimator, compile=config.compile,
                                            dtype=torch.float32 if onnx else self.vocoder_dtype,
                                            runtime=self.flow_runtime)
        self.flow_encoder: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = TokenEncoder(model.s3gen.flow)
        if onnx:
            from tts import onnx_flow

            encoder = onnx_flow.token_encoder(model.s3gen.flow)
            for runner in (encoder, self.flow_estimator.onnx):
                runner.prepare(self.vocoder_thread_counts())  # its sessions, made now
            self.flow_encoder = encoder
        prepare_hift(model.s3gen.mel2wav, self.vocoder_dtype)
        self.params = SamplingParams.of(
            fam.sampling, temperature=config.temperature, cfg_weight=config.cfg_weight,
            repetition_penalty=config.repetition_penalty, min_p=config.min_p, top_p=config.top_p,
            top_k=config.top_k,
        )
        self._lock = threading.Lock()
        self._identity: str | None = None
        self._ahead: _Ahead | None = None  # the request's next call, decoding ahead

    def prefix_kv(self, voice: Voice) -> PrefixKV:
        """The K/V every request of `voice` starts with (computed on first use of a voice added later)."""
        entry = self._prefix_kv.get(voice.name)
        if entry is None or entry[0] is not voice:
            entry = (voice, self.decoder.cache_prefix(voice.cond_emb, self.max_text_positions))
            self._prefix_kv[voice.name] = entry
        return entry[1]

    @property
    def pipelined(self) -> bool:
        """Whether T3 decodes on its own thread (tts.pipeline; null = the profile's: on)."""
        return self.resolved.pipeline

    def thread_split(self) -> tuple[int, int] | None:
        """(T3 threads, vocoder threads) while pipelined on a CPU (None on CUDA: streams, not cores).

        None with compile too: compiled graphs are guarded on the thread count, and a different one
        on either side would recompile them mid-request.
        """
        if self.device.type == "cuda" or self.config.compile:
            return None
        total = torch.get_num_threads()
        t3 = self.config.t3_threads or max(1, total // 2)
        return min(t3, total), max(1, total - t3)

    def vocoder_thread_counts(self) -> list[int]:
        """The thread counts the vocoder runs with: every core (the first chunk, inline decoding, the
        end of a request) and, pipelined on a CPU, its share beside T3."""
        return self._thread_counts(side=1)

    def t3_thread_counts(self) -> list[int]:
        """The thread counts T3 runs with: every core (a request's first block) and, pipelined on a
        CPU, its share beside the vocoder (the rest, and the next text decoded ahead)."""
        return self._thread_counts(side=0)

    def _thread_counts(self, side: int) -> list[int]:
        split = self.thread_split() if self.pipelined else None
        return sorted({torch.get_num_threads(), *(split[side:side + 1] if split else ())})

    @property
    def voices(self) -> tuple[str, ...]:
        return self.voice_bank.names

    @property
    def languages(self) -> tuple[str, ...]:
        return self.family.languages

    @property
    def model(self) -> str:
        """The loaded family member's name."""
        return self.family.name

    def settings(self) -> dict[str, object]:
        """What this engine runs with, resolved (for the start-up log line and benches)."""
        return {
            "model": self.family.name, "profile": self.resolved.profile, "device": str(self.device),
            "t3": self.loaded.quant or str(self.dtype).removeprefix("torch."),
            "kv": str(self.decoder.kv_dtype).removeprefix("torch."),
            "decode_attention": "c-kernel" if self.decoder.cpu_attention is not None else "torch",
            "vocoder": str(self.vocoder_dtype).removeprefix("torch."), "flow_runtime": self.flow_runtime,
            "compile": self.config.compile, "pipeline": self.pipelined, "flow_steps": self.flow_steps,
            "flow_cfg_rate": self.flow_cfg_rate, "first_chunk_tokens": self.resolved.first_chunk_tokens,
            "chunk_tokens": self.resolved.chunk_tokens, "lean_below_s": self.resolved.lean_below_s,
            "context_tokens": self.resolved.context_tokens, "prompt_tokens": self.resolved.prompt_tokens,
            "first_prompt_tokens": self.resolved.first_prompt_tokens,
            "threads": torch.get_num_threads(),
        }

    def identity(self) -> str:
        """Everything besides text, voice name and language that determines this engine's audio, as one
        string: the family, the checkpoint's files (by size and time), each voice's conditionals and
        every audible setting. Two engines with equal identities speak a seeded request alike."""
        if self._identity is None:
            voices = {}
            for voice in self.voice_bank:
                digest = hashlib.sha256()
                for tensor in (voice.cond_emb, voice.prompt.tokens, voice.prompt.mels, voice.prompt.xvector):
                    digest.update(tensor.detach().float().cpu().numpy().tobytes())
                voices[voice.name] = digest.hexdigest()
            settings = {k: v for k, v in dataclasses.asdict(self.config).items() if k not in _NOT_AUDIBLE}
            settings.update(dataclasses.asdict(self.resolved))  # what the profile chose
            self._identity = json.dumps({
                "family": self.family.name, "checkpoint": checkpoint_files(self.checkpoint_dir, self.family),
                "device": self.device.type, "dtype": self.settings()["t3"], "kv": self.settings()["kv"],
                "vocoder": self.settings()["vocoder"], "flow_runtime": self.flow_runtime,
                "sampling": dataclasses.asdict(self.params),
                "flow": [self.flow_steps, self.flow_cfg_rate], "voices": voices, "settings": settings,
            }, sort_keys=True)
        return self._identity

    # -- loading ------------------------------------------------------------------------------------

    @classmethod
    def load(cls, config: TTSConfig) -> StreamingTTS:
        """Resolve the checkpoint (hub id, directory, or the family's repository), load every part."""
        engine = cls(config, load_model(config))
        log.info("engine: %s; voices %s; languages %s",
                 ", ".join(f"{k} {v}" for k, v in engine.settings().items()), ", ".join(engine.voices),
                 ", ".join(engine.languages))
        return engine

    # -- serving ------------------------------------------------------------------------------------

    def warm_up(self, progress: Progress | None = None) -> float:
        """Run every shape the hot path uses before serving; returns the seconds it took.

        `progress(done, total, what)` is called after each warmed shape (compiled T3 step graphs,
        flow-estimator window buckets) and after the end-to-end request that closes the warm-up.
        """
        t0 = time.perf_counter()
        cfg = self.config
        # Every KV bucket from the shortest possible prefix to a full cache (compiled T3 step graphs),
        # every flow window bucket of every voice (compiled graphs, or oneDNN's per-shape kernels).
        shortest = min(self.decoder.prefix_len(1) - self.decoder.cond_len + int(v.cond_emb.shape[1])
                       for v in self.voice_bank)  # a voice's prompt may be shorter than the full one
        t3_buckets = self.decoder.buckets_for(shortest, self.decoder.max_len - shortest - 1) if cfg.compile else []
        frames = [n for voice in self.voice_bank
                  for n in window_frames(voice.prompt, self.resolved.context_tokens, cfg.max_chunk_tokens,
                                         self.resolved.first_prompt_tokens, lean=self.resolved.lean_below_s > 0)]
        flow_buckets = {bucket(n) for n in frames} if self.flow_estimator.bucketed else set()
        # HiFT at each of its input lengths (tts.vocoder.hift_length), on a CPU at each thread count
        # the vocoder runs with: oneDNN builds its convolution kernels per length and thread count.
        hift_threads = self.vocoder_thread_counts()
        longest = hift_length(MEL_PER_TOKEN * (cfg.max_chunk_tokens + LOOKAHEAD + self.family.flow.tail_silence))
        hift_runs = ([(n, k) for k in hift_threads for n in range(HIFT_BUCKET_MELS, longest + 1, HIFT_BUCKET_MELS)]
                     if self.device.type == "cpu" else [])
        total = len(t3_buckets) + len(flow_buckets) + len(hift_runs) + 1
        if t3_buckets:
            self.decoder.warm_up(shortest, self.decoder.max_len - shortest - 1, self.params,
                                 progress=lambda n, _: _report(progress, n, total, "T3 step graph"))
            log.info("warm-up: %d T3 step graphs compiled", len(t3_buckets))
        if flow_buckets:
            n = self.flow_estimator.warm_up(
                frames, rows=2 if self.flow_cfg_rate > 0 else 1, device=self.device,
                progress=lambda k, _: _report(progress, len(t3_buckets) + k, total, "flow estimator window"))
            log.info("warm-up: flow estimator run at %d window lengths%s", n, " (compiled)" if cfg.compile else "")
        done = len(t3_buckets) + len(flow_buckets)
        for n, threads in hift_runs:
            with _threads(threads), torch.inference_mode():
                self.s3gen.mel2wav.inference(speech_feat=torch.zeros(1, 80, n, device=self.device),
                                             cache_source=torch.zeros(1, 1, 0, device=self.device))
            done += 1
            _report(progress, done, total, "HiFT length")
        if hift_runs:
            log.info("warm-up: HiFT run at %d lengths x %d thread counts", len(hift_runs) // len(hift_threads),
                     len(hift_threads))
        if self.device.type == "cpu":
            # T3's longest prefill at each thread count it runs with: the first one at a count is slow.
            voice = self.voice_bank.get(None)
            for threads in self.t3_thread_counts():
                with _threads(threads):
                    self.decoder.warm_up_prefill(voice.cond_emb, self.max_text_positions, self.prefix_kv(voice))
        self.tokenizer.prepare(self.default_language)  # e.g. Chinese word segmentation, before serving
        # One short request end to end: prefill, steps, two vocoder chunks, final flush.
        stats = SynthesisStats()
        words = "Ready to speak now."
        first_two = self.resolved.first_chunk_tokens + self.resolved.chunk_tokens + LOOKAHEAD
        for _ in self.stream(words, max_tokens=first_two, stats=stats):
            pass
        _report(progress, total, total, "end-to-end request")
        elapsed = time.perf_counter() - t0
        log.info("warm-up done in %.1f s", elapsed)
        return elapsed

    def stream(self, text: str, voice: str | None = None, language: str | None = None,
               cancel: threading.Event | None = None, *, max_tokens: int | None = None,
               stats: SynthesisStats | None = None, seed: int | None = None,
               queued_s: float = 0.0, then: str | None = None) -> Iterator[npt.NDArray[np.float32]]:
        """Yield float32 PCM chunks for `text` as they are synthesised.

        `language`: an ISO code of `languages` (None: the configured default). `queued_s`: seconds
        of audio the player still has queued from earlier text (the previous sentence); the chunk
        schedule counts it as buffer, so chunks can grow sooner. `then`: the text the same request
        speaks next (same voice, language and seed): when pipelined, T3 goes on with its prefill
        and tokens as soon as this text's are decoded, while the vocoder finishes this text, and
        the `stream` of it that follows takes them over (the same tokens and audio as without;
        any other call discards them). Raises UnknownVoice or
        UnsupportedLanguage before any work, LanguageUnavailable when the language's text
        front-end is missing, SynthesisError (OutOfMemory) when synthesis fails. Checks `cancel`
        between chunks; a cancelled stream simply ends.
        """
        selected = self.voice_bank.get(voice)  # raises UnknownVoice
        lang = language or self.default_language
        if lang not in self.family.languages:
            raise UnsupportedLanguage(lang, self.family.languages, self.family.name)
        clean = self.clean(text, lang)
        if not clean:
            raise SynthesisError("nothing to say: the text is empty after normalisation")
        budget = token_budget(clean, self.config.max_tokens_per_char, self.config.max_speech_tokens)
        if max_tokens is not None:
            budget = min(budget, max_tokens)
        seed = seed if seed is not None else self.config.seed
        spec = _CallSpec(clean, lang, selected, budget, seed)
        next_clean = self.clean(then, lang) if then is not None and self.pipelined else ""
        following = (_CallSpec(next_clean, lang, selected, token_budget(
            next_clean, self.config.max_tokens_per_char, self.config.max_speech_tokens), seed)
            if next_clean else None)
        stats = stats if stats is not None else SynthesisStats()
        stats.text_chars = len(clean)
        with self._lock:
            try:
                yield from self._stream(spec, cancel, stats, queued_s, following)
            except (TTSError, GeneratorExit):
                raise
            except torch.cuda.OutOfMemoryError as exc:
                torch.cuda.empty_cache()
                raise OutOfMemory("out of GPU memory during synthesis; caches released") from exc
            except MemoryError as exc:
                raise OutOfMemory("out of memory during synthesis") from exc
            except (RuntimeError, ValueError, IndexError) as exc:
                raise SynthesisError(f"synthesis failed: {exc}") from exc

    def clean(self, text: str, language: str) -> str:
        """The one place text is cleaned: tags the family lacks dropped (its own pass through), then
        normalised as the family's upstream does (punctuation, the script's full stop)."""
        text, dropped = strip_tags(text, keep=self.tokenizer.tags)
        if dropped:
            log.debug("the %s model has no tags %s; dropped them", self.family.name, " ".join(dropped))
        return normalize(text, language, punctuation=self.family.punctuation)

    def encode(self, text: str, language: str) -> torch.Tensor:
        """Normalised text -> the decoder's text positions (1, T); raises SynthesisError when too long."""
        ids = self.tokenizer.encode(text, language)  # raises LanguageUnavailable
        if len(ids) > self.config.max_text_tokens:
            raise SynthesisError(
                f"text of {len(ids)} tokens is longer than tts.max_text_tokens "
                f"({self.config.max_text_tokens}); split it into sentences"
            )
        return self.decoder.text_ids(ids)

    def _begin(self, spec: _CallSpec) -> _Call:
        """A call's own state, drawn in this order from its generator (the vocoder's noise, then T3's
        samples), so a seeded call sounds the same whether or not it was decoded ahead."""
        generator = torch.Generator(device=self.device)
        generator.manual_seed(spec.seed if spec.seed is not None else int.from_bytes(os.urandom(6), "little"))
        with torch.inference_mode():
            prefix = self.decoder.prefix_embeds(spec.voice.cond_emb, self.encode(spec.text, spec.language))
        vocoder = StreamingVocoder(self.s3gen, spec.voice.prompt, max_tokens=spec.budget, flow=self.family.flow,
                                   flow_steps=self.flow_steps, context_tokens=self.resolved.context_tokens,
                                   crossfade_ms=self.config.crossfade_ms, generator=generator,
                                   flow_cfg_rate=self.flow_cfg_rate, estimator=self.flow_estimator,
                                   first_prompt_tokens=self.resolved.first_prompt_tokens, encoder=self.flow_encoder)
        return _Call(spec, generator, prefix, vocoder)

    def _stream(self, spec: _CallSpec, cancel: threading.Event | None, stats: SynthesisStats, queued_s: float,
                following: _CallSpec | None) -> Iterator[npt.NDArray[np.float32]]:
        cfg = self.config
        start = time.perf_counter()
        halt = threading.Event()  # set when the consumer is done early: the decoder stops too
        ahead = self._take_ahead(spec)
        if ahead is not None:  # decoded ahead: T3 has been at it since the previous call's tokens ended
            call = ahead.call
            cores = _Cores(ahead.caller_threads, ahead.thread if ahead.split else None)
            blocks = _timed(ahead.blocks(halt), stats)
        else:
            call = self._begin(spec)
            cores = _Cores(torch.get_num_threads())
            blocks = self._decoded_blocks(call, halt, cancel, stats, cores)
        vocoder = call.vocoder
        schedule = ChunkSchedule(self.resolved.first_chunk_tokens, self.resolved.chunk_tokens, cfg.chunk_growth,
                                 cfg.max_chunk_tokens, cfg.chunk_headroom, queued_s=queued_s)
        tokens: list[int] = []
        produced = 0
        target = schedule.next()
        try:
            for block in blocks:
                if not produced:
                    stats.prefill_s = self.decoder.last_prefill_s
                produced += len(block)
                # Ids the vocoder cannot take (start/pad specials) are dropped, as upstream does.
                tokens.extend(t for t in block if t < S3GEN_VOCAB)
                if block.last:
                    # T3 is done: what is left goes in one final window (chunk-sized ones first
                    # if more than the largest chunk is left), and the decoder's cores come back
                    # to the vocoder now (closing the pipeline restores the thread count), unless
                    # T3 goes on with the request's next text.
                    blocks.close()
                    if following is not None and not (cancel is not None and cancel.is_set()):
                        self._start_ahead(following, cancel, cores)
                while vocoder.ready(len(tokens), target) and not (
                        block.last and len(tokens) - vocoder.emitted_tokens <= cfg.max_chunk_tokens):
                    if cancel is not None and cancel.is_set():
                        return
                    # A lean chunk (the first prompt's fewer flow frames) while the queue is thin.
                    lean = schedule.buffered_s < self.resolved.lean_below_s
                    pcm = vocoder.process(tokens, chunk=target, lean=lean, after_flow=cores.reclaim)
                    chunk = self._emit(pcm, stats, start, vocoder)
                    schedule.emitted(target, len(pcm) / SAMPLE_RATE, stats.chunk_times[-1][0])
                    stats.chunk_tokens.append(target)
                    yield chunk
                    target = schedule.next()
                if cancel is not None and cancel.is_set() or block.last:
                    break
        finally:
            halt.set()
            blocks.close()
        stats.tokens = len(tokens)
        stats.stopped_by_guard = produced >= spec.budget
        if cancel is not None and cancel.is_set():
            return
        # The rest, lean too while the queue is thin: a short sentence's last window (or the one
        # before the next sentence's first) must come before the audio queued so far runs out.
        pcm = vocoder.process(tokens, final=True, lean=schedule.buffered_s < self.resolved.lean_below_s)
        if len(pcm):
            yield self._emit(pcm, stats, start, vocoder)

    def _decoded_blocks(self, call: _Call, halt: threading.Event, cancel: threading.Event | None,
                        stats: SynthesisStats, cores: _Cores) -> Generator[Block, None, None]:
        """T3's token blocks, the first one exactly what the first chunk needs; same tokens either way.

        Inline, or (tts.pipeline) the first block inline and the rest on a thread that keeps decoding
        while the caller vocodes. The first block and the first chunk run alone, with every core:
        they are what first audio waits for, so the thread starts only when the caller asks for the
        second block. On a CPU the two sides then split the cores (`thread_split`), each its own
        OpenMP team, so neither waits on the other's idle threads. T3 stays on its share even while
        the vocoder waits for tokens: a second thread running a multi-threaded operator gives the
        process more OpenMP workers than CPUs, and libgomp then wakes each parallel region through
        the kernel (a T3 step on two cores took 80 ms there against 50 ms on one; the paragraph's
        RTF was 1.60-1.68 with such borrowing, 1.43-1.55 without). Once T3's thread has ended,
        `cores.reclaim` gives the caller every core back mid-chunk. Ends early once `halt` or
        `cancel` is set.
        """
        stop = _AnyEvent(halt, cancel)
        split = self.thread_split() if self.pipelined else None
        blocks = _timed(self._generate(call, stop), stats)
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
        t3 = _T3Thread(blocks, split[0] if split is not None else None, self.device)
        if split is not None:
            cores.worker = t3.thread
            torch.set_num_threads(split[1])  # the vocoder's share, until this request ends
        try:
            yield from t3.blocks()
        finally:
            halt.set()
            t3.thread.join()
            torch.set_num_threads(cores.threads)

    def _generate(self, call: _Call, stop: _AnyEvent) -> Generator[Block, None, None]:
        spec = call.spec
        return self.decoder.generate(call.prefix, spec.budget, self.params, generator=call.generator, cancel=stop,
                                     first_block=self.resolved.first_chunk_tokens + LOOKAHEAD,
                                     cached=self.prefix_kv(spec.voice))

    def _start_ahead(self, spec: _CallSpec, cancel: threading.Event | None, cores: _Cores) -> None:
        """Start decoding the request's next text on a T3 thread (with T3's share of the cores) while
        this call's vocoder finishes on the rest; `stream` of that text takes it over."""
        try:
            call = self._begin(spec)
        except TTSError as exc:  # e.g. too long: its own `stream` says so
            log.debug("not decoding the next text ahead: %s", exc)
            return
        halt = threading.Event()
        split = self.thread_split()
        t3 = _T3Thread(self._generate(call, _AnyEvent(halt, cancel)), split[0] if split is not None else None,
                       self.device)
        if split is not None:
            cores.worker = t3.thread  # the vocoder keeps its share while T3 runs on
            torch.set_num_threads(split[1])
        self._ahead = _Ahead(call, t3, halt, cores.threads, split is not None)

    def _take_ahead(self, spec: _CallSpec) -> _Ahead | None:
        """The call decoded ahead if it is `spec`'s; any other is stopped and dropped."""
        ahead, self._ahead = self._ahead, None
        if ahead is None:
            return None
        if ahead.call.spec.key == spec.key:
            return ahead
        ahead.stop()
        return None

    @staticmethod
    def _emit(pcm: npt.NDArray[np.float32], stats: SynthesisStats, start: float,
              vocoder: StreamingVocoder) -> npt.NDArray[np.float32]:
        now = time.perf_counter() - start
        if stats.first_chunk_s is None:
            stats.first_chunk_s = now
        stats.chunk_times.append((now, len(pcm)))
        stats.audio_samples += len(pcm)
        stats.flow_s, stats.hift_s = vocoder.flow_s, vocoder.hift_s
        return pcm.astype(np.float32, copy=False)  # unclipped: the daemon's output stage clips, after levelling


def _timed(blocks: Generator[Block, None, None], stats: SynthesisStats) -> Generator[Block, None, None]:
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


@dataclass(frozen=True)
class _CallSpec:
    """One engine call's inputs, validated and cleaned by `stream`."""

    text: str  # normalised
    language: str
    voice: Voice
    budget: int  # speech tokens at most
    seed: int | None  # None: fresh randomness

    @property
    def key(self) -> tuple[object, ...]:
        return (self.text, self.language, self.voice.name, id(self.voice), self.budget, self.seed)


@dataclass
class _Call:
    """A call's own state: its generator (vocoder noise, then T3's samples), T3 prefix, vocoder."""

    spec: _CallSpec
    generator: torch.Generator
    prefix: torch.Tensor  # (rows, P, dim)
    vocoder: StreamingVocoder


class _T3Thread:
    """T3's blocks produced on a thread of their own (with `threads` OpenMP threads, on CUDA its own
    stream), handed over through a queue; an exception is handed over too and raised by `blocks`."""

    def __init__(self, blocks: Iterator[Block], threads: int | None, device: torch.device) -> None:
        self._source = blocks
        self._threads = threads
        self._device = device
        self._handoff: queue.Queue[Block | BaseException | None] = queue.Queue()
        self.thread = threading.Thread(target=self._produce, name="chatterd-t3", daemon=True)
        self.thread.start()

    def _produce(self) -> None:
        try:
            if self._threads is not None:
                torch.set_num_threads(self._threads)  # T3's share of the cores, for this thread's life
            side_stream = (torch.cuda.Stream(self._device)  # type: ignore[no-untyped-call]
                           if self._device.type == "cuda" else None)
            with torch.cuda.stream(side_stream) if side_stream is not None else contextlib.nullcontext():
                for block in self._source:
                    self._handoff.put(block)
            self._handoff.put(None)
        except BaseException as exc:  # handed to the consumer, which raises it
            self._handoff.put(exc)

    def blocks(self) -> Iterator[Block]:
        while (item := self._handoff.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item


@dataclass
class _Ahead:
    """The request's next call, decoding since the previous call's T3 ended (`StreamingTTS._start_ahead`)."""

    call: _Call
    t3: _T3Thread
    halt: threading.Event  # stops its decoding
    caller_threads: int  # every core the caller had, restored when it ends
    split: bool  # T3 runs on its share of the cores (the caller on the rest)

    @property
    def thread(self) -> threading.Thread:
        return self.t3.thread

    def blocks(self, halt: threading.Event) -> Generator[Block, None, None]:
        """Its blocks for the call that takes it over; `halt` (that call's) stops it too."""
        try:
            for block in self.t3.blocks():
                if halt.is_set():
                    return
                yield block
        finally:
            self.stop()

    def stop(self) -> None:
        """Stop its decoding (which releases the decoder) and give the caller every core back."""
        self.halt.set()
        self.t3.thread.join()
        torch.set_num_threads(self.caller_threads)


class _Cores:
    """The caller's thread count while T3 decodes on its own thread with a share of the cores.

    A chunk the vocoder starts while T3 is finishing the text would otherwise run to its end on the
    vocoder's share: on two cores, the paragraph's last 100-token chunk took 3.6 s on one core
    after T3 had ended during its flow. `reclaim` (called between a chunk's flow and its HiFT)
    gives the caller every core back once T3's thread has ended, as the end of the request would.
    The thread must have ended, not merely sent its last block: while it lives it keeps its own
    OpenMP team, and more workers than CPUs make libgomp wake each parallel region through the
    kernel (`StreamingTTS._decoded_blocks`).
    """

    def __init__(self, threads: int, worker: threading.Thread | None = None) -> None:
        self.threads = threads  # every core the caller had: restored at the end
        self.worker = worker  # T3's thread, when it runs on a share

    def reclaim(self) -> None:
        if self.worker is not None and not self.worker.is_alive() and torch.get_num_threads() != self.threads:
            torch.set_num_threads(self.threads)


@contextlib.contextmanager
def _threads(n: int) -> Iterator[None]:
    """This thread's torch thread count set to `n` for a while."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class _AnyEvent:
    """Looks like a threading.Event to the decoder's cancel check; set when any of its events is."""

    def __init__(self, *events: threading.Event | None) -> None:
        self._events = [e for e in events if e is not None]

    def is_set(self) -> bool:
        return any(e.is_set() for e in self._events)


def _report(progress: Progress | None, done: int, total: int, what: str) -> None:
    if progress is not None:
        progress(done, total, what)
