"""Engine configuration: the `tts:` section of chatterd's YAML, as a frozen dataclass.

The engine owns this type so that `tts/` never imports the daemon; `daemon.config` embeds it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tts.families import DEFAULT_FAMILY, FAMILIES

# T3 weight formats on a CPU (`dtype`), beside the float dtypes: tts.t3.quantize_layers makes them.
QUANTIZED_WEIGHTS = ("int8", "int4")


@dataclass(frozen=True)
class TTSConfig:
    # Which member of the Chatterbox family: turbo | original | multilingual (tts.families).
    model: str = DEFAULT_FAMILY
    # Hugging Face repo id, or a local directory with the family's checkpoint files; null = the
    # family's own hub repository.
    checkpoint: str | None = None
    # Language of requests that name none; null = the family's default (en).
    language: str | None = None
    # "auto" picks cuda when available, else cpu.
    device: str = "auto"
    # T3 weight dtype: auto | float32 | bfloat16 | float16 | int8 | int4 (int8/int4: weights in blocks
    # of 32 run by ONNX Runtime, CPU only; auto = the family's cpu_weights on a CPU, bf16/fp16 on CUDA).
    dtype: str = "auto"
    # Named voices: name -> reference wav (5-10 s of clean speech). The checkpoint's own voice is "default".
    voices: dict[str, str] = field(default_factory=dict)
    # Voice used when a request names none; must be "default" or a key of `voices`.
    default_voice: str = "default"
    # Where computed voice conditionals and compile artefacts are cached; null = no disk cache.
    cache_dir: str | None = None
    # Sampling; null = the family's upstream default (tts.families). cfg_weight only applies to a
    # family that decodes with CFG, exaggeration to one with an emotion input.
    temperature: float | None = None
    cfg_weight: float | None = None
    exaggeration: float | None = None
    repetition_penalty: float | None = None
    min_p: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    # Fixed seed for reproducible output; null = fresh randomness per request.
    seed: int | None = None
    # Length guard: at most ceil(chars * max_tokens_per_char) speech tokens (25 tokens = 1 s),
    # and never more than max_speech_tokens. Ends runaway generation when no stop token comes.
    max_tokens_per_char: float = 3.0
    max_speech_tokens: int = 1000
    # Longest text one utterance may have, in text tokens (about one per character); sizes the KV
    # cache together with max_speech_tokens. Longer text is split into sentences before it gets here.
    max_text_tokens: int = 400
    # Streaming schedule, in speech tokens: a small first chunk for fast first audio; after it, each
    # chunk as large as the audio queued ahead of playback covers (its synthesis may take at most
    # `chunk_headroom` of that audio's duration), between `chunk_tokens` and `max_chunk_tokens`.
    # When synthesis is slower than playback, chunks grow by `chunk_growth` instead (never shrinking
    # while it stays slower). null = the device profile's (tts/profiles.py: first CPU 9, GPU 10;
    # chunk_tokens CPU 8, GPU 25).
    first_chunk_tokens: int | None = None
    chunk_tokens: int | None = None
    chunk_growth: float = 2.0
    max_chunk_tokens: int = 100
    chunk_headroom: float = 0.5
    # Already-vocoded tokens fed again as left context at every chunk (prosody continuity);
    # null = the device profile's (CPU 25, GPU 50).
    context_tokens: int | None = None
    # Flow-matching (CFM) Euler steps in the vocoder; null = the family's (original 10, Turbo 2), on a
    # CPU (profile realtime) the fewest its decoder is made for (FlowSpec.fewest_steps: Turbo 1).
    flow_steps: int | None = None
    # Classifier-free guidance rate inside the flow matching; null = the family's (original 0.7,
    # Turbo 0: its meanflow decoder has CFG distilled in). 0 halves the original's vocoder cost.
    flow_cfg_rate: float | None = None
    # Cap on the voice-prompt tokens prepended to every vocoder call; null = the device profile's
    # (CPU 50, i.e. 2 s; GPU the full prompt, ~10 s). A number above the prompt's length means all of it.
    prompt_tokens: int | None = None
    # The first chunk's voice prompt, in tokens (its last ones; at most prompt_tokens): first audio
    # waits for that chunk, and with the whole prompt most of its flow window is prompt. null = the
    # device profile's (CPU 25, i.e. 1 s; GPU the whole prompt_tokens).
    first_prompt_tokens: int | None = None
    # While less audio than this (seconds) is queued ahead of playback, a chunk runs behind the
    # first chunk's shorter prompt too (a "lean" chunk: fewer flow frames, so it is ready sooner).
    # null = the device profile's (CPU 1.0; GPU 0: never).
    lean_below_s: float | None = None
    # Crossfade at chunk seams, milliseconds.
    crossfade_ms: float = 20.0
    # Decode T3 on its own thread (and CUDA stream) while the vocoder works on the previous chunk.
    # null = the device profile's: on (CUDA: its own stream; CPU: its own cores, see t3_threads).
    pipeline: bool | None = None
    # torch.compile the T3 step and the flow estimator (and warm every shape up before serving).
    compile: bool = False
    # Threads for CPU inference; null = torch's default.
    threads: int | None = None
    # With pipeline on a CPU: threads T3 decodes with while the vocoder works with the rest;
    # null = half of them (one each on two cores).
    t3_threads: int | None = None
    # Vocoder weight dtype (HiFT's, and a torch flow estimator's): auto | float32 | bfloat16. auto:
    # bfloat16 on a CPU with native bf16 (avx512_bf16 or amx_bf16 flags), else float32 (GPUs:
    # fidelity first).
    vocoder_dtype: str = "auto"
    # The flow's (token encoder and estimator) runtime: auto | torch | onnxruntime. onnxruntime runs
    # them in fp32 (vocoder_dtype then sets HiFT's); auto: onnxruntime on a CPU with AVX-512 (about
    # twice torch's fp32 speed there at the same output) unless compile is on, else torch.
    flow_runtime: str = "auto"

    def __post_init__(self) -> None:
        def unset_or(value: float | None, ok: bool) -> bool:
            return value is None or ok

        checks: list[tuple[bool, str]] = [
            (self.model in FAMILIES, f"model must be one of {', '.join(FAMILIES)}"),
            (self.language is None or self.language in FAMILIES[self.model].languages
             if self.model in FAMILIES else True,
             f"language must be one the model speaks: {', '.join(FAMILIES[self.model].languages)}"
             if self.model in FAMILIES else ""),
            (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:"),
             "device must be auto, cpu, cuda or cuda:N"),
            (self.dtype in ("auto", "float32", "bfloat16", "float16", *QUANTIZED_WEIGHTS),
             f"dtype must be auto, float32, bfloat16, float16, {' or '.join(QUANTIZED_WEIGHTS)}"),
            (unset_or(self.temperature, (self.temperature or 0) > 0), "temperature must be > 0"),
            (unset_or(self.cfg_weight, (self.cfg_weight or 0) >= 0), "cfg_weight must be >= 0"),
            (unset_or(self.exaggeration, 0 <= (self.exaggeration or 0) <= 2), "exaggeration must be in 0..2"),
            (unset_or(self.repetition_penalty, (self.repetition_penalty or 0) >= 1), "repetition_penalty must be >= 1"),
            (unset_or(self.min_p, 0 <= (self.min_p or 0) < 1), "min_p must be in [0, 1)"),
            (unset_or(self.top_p, 0 < (self.top_p or 0) <= 1), "top_p must be in (0, 1]"),
            (self.max_tokens_per_char > 0, "max_tokens_per_char must be > 0"),
            (self.max_speech_tokens >= 1, "max_speech_tokens must be >= 1"),
            (self.max_text_tokens >= 8, "max_text_tokens must be >= 8"),
            (not (self.compile and self.dtype in QUANTIZED_WEIGHTS),
             f"compile cannot be used with dtype {self.dtype}: its layers run in ONNX Runtime, "
             "which torch.compile cannot trace; use compile: false, or a float dtype"),
            (self.top_k is None or self.top_k >= 0, "top_k must be >= 0 (0 = off) or null"),
            (not (self.model in FAMILIES and FAMILIES[self.model].flow.meanflow and (self.flow_cfg_rate or 0) > 0),
             "flow_cfg_rate must be 0 or null for the turbo model: its meanflow decoder has CFG distilled in"),
            (self.first_chunk_tokens is None or self.first_chunk_tokens >= 1,
             "first_chunk_tokens must be >= 1 or null"),
            (self.chunk_tokens is None or self.chunk_tokens >= 1, "chunk_tokens must be >= 1 or null"),
            (self.lean_below_s is None or self.lean_below_s >= 0, "lean_below_s must be >= 0 or null"),
            (self.chunk_growth >= 1, "chunk_growth must be >= 1"),
            (self.max_chunk_tokens >= (self.chunk_tokens or 1), "max_chunk_tokens must be >= chunk_tokens"),
            (0 < self.chunk_headroom <= 1, "chunk_headroom must be in (0, 1]"),
            (self.context_tokens is None or self.context_tokens >= 0, "context_tokens must be >= 0 or null"),
            (unset_or(self.flow_steps, 1 <= (self.flow_steps or 0) <= 50), "flow_steps must be in 1..50"),
            (unset_or(self.flow_cfg_rate, 0 <= (self.flow_cfg_rate or 0) <= 2), "flow_cfg_rate must be in 0..2"),
            (self.prompt_tokens is None or self.prompt_tokens >= 0, "prompt_tokens must be >= 0 or null"),
            (self.first_prompt_tokens is None or self.first_prompt_tokens >= 0,
             "first_prompt_tokens must be >= 0 or null"),
            (0 <= self.crossfade_ms <= 200, "crossfade_ms must be in 0..200"),
            (self.threads is None or self.threads >= 1, "threads must be >= 1 or null"),
            (self.t3_threads is None or self.t3_threads >= 1, "t3_threads must be >= 1 or null"),
            (self.vocoder_dtype in ("auto", "float32", "bfloat16"), "vocoder_dtype must be auto, float32 or bfloat16"),
            (self.flow_runtime in ("auto", "torch", "onnxruntime"), "flow_runtime must be auto, torch or onnxruntime"),
            (self.default_voice == "default" or self.default_voice in self.voices,
             "default_voice must be 'default' or a name under tts.voices"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
