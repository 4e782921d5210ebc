"""The Chatterbox family: one description per member, read by the shared machinery.

Every member is a T3 (text + voice -> speech tokens) over S3Gen (speech tokens -> 24 kHz audio).
They differ in facts, not in code paths: T3's backbone and whether it decodes with classifier-free
guidance, how its prefix is laid out, its tokenizer and languages, S3Gen's flow decoder (10 cosine
steps with CFG, or a distilled 2-step meanflow), the checkpoint's files, and sampling defaults. The
decoder (`tts.t3`), the streaming vocoder (`tts.vocoder`) and the engine take a `Family` and never
ask for a member by name. A new member (a 110M GPT-2 "Nano" T3 over Turbo's vocoder, say) is one
more description here plus whatever is truly new about it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from tts import tokenizers
from tts.errors import TTSError
from tts.text import PUNC_NORM, TURBO_PUNC_NORM
from tts.tokenizers import MTL_LANGUAGES, TextTokenizer

# S3Gen's speech-token vocabulary, the same for every member: T3 ids at or above it (start/stop/pad
# specials) cannot be vocoded and are dropped.
S3GEN_VOCAB = 6561
# S3Gen's silence token (upstream `S3GEN_SIL`): Turbo appends a few after the last speech token.
S3GEN_SILENCE = 4299



@dataclass(frozen=True)
class Sampling:
    """A member's sampling defaults, as its upstream `generate()` uses them.

    `penalty_last`: the repetition penalty runs after the warpers (Turbo's processor order:
    temperature, top-k, top-p, penalty) instead of first (the original: penalty, temperature,
    min-p, top-p). `bos_in_history`: the start token stays in the penalised history after the
    first step (the original's `generated_ids` keeps it; Turbo's history is the generated tokens).
    """

    temperature: float
    repetition_penalty: float
    top_p: float
    min_p: float = 0.0
    top_k: int = 0  # 0 = off
    cfg_weight: float = 0.0  # only with a CFG backbone
    exaggeration: float = 0.5  # only where the conditioning has an emotion input
    penalty_last: bool = False
    bos_in_history: bool = True


@dataclass(frozen=True)
class FlowSpec:
    """S3Gen's token-to-mel decoder as a member ships it."""

    weights: str  # file name in the checkpoint
    meanflow: bool  # distilled meanflow estimator: takes (t, r), no CFG, linear time schedule
    steps: int  # Euler steps upstream uses
    cfg_rate: float  # flow CFG rate upstream uses (0: none)
    tail_silence: int = 0  # S3GEN_SILENCE tokens appended after the last speech token
    # The fewest steps the decoder is made for (the `realtime` device profile's): None = `steps`.
    fewest_steps: int | None = None

    @property
    def schedule(self) -> str:
        return "linear" if self.meanflow else "cosine"


@dataclass(frozen=True)
class Family:
    name: str
    summary: str
    hub_repo: str
    # T3.
    t3_weights: str
    hparams: Callable[[], Any]  # -> upstream T3Config
    cfg: bool  # decodes two rows (conditional, unconditional text) mixed by cfg_weight
    text_markers: bool  # text is wrapped in start/stop text tokens
    bos_repeats: int  # start-of-speech embeddings at the end of the prefix (upstream feeds 2 or 1)
    load_tokenizer: Callable[[Path], TextTokenizer]  # checkpoint dir -> tokenizer (its tags pass through)
    write_tokenizer: Callable[[Path], None]  # a random stand-in into a checkpoint dir
    tokenizer_files: tuple[str, ...]  # required in a local checkpoint
    languages: tuple[str, ...]
    punctuation: tuple[tuple[str, str], ...]  # upstream's punc_norm replacements for this member
    sampling: Sampling
    flow: FlowSpec
    # Voices.
    ve_weights: str = "ve.safetensors"
    t3_prompt_seconds: float = 6.0  # reference audio the T3 speech prompt is taken from
    min_reference_seconds: float = 1.0
    reference_lufs: float | None = None  # loudness a reference is normalised to first (None: as is)
    hub_extras: tuple[str, ...] = ()  # fetched from the hub too where the repository has them
    # T3's weight format when `tts.dtype` is auto on a CPU (tts.quantized: int8 or int4 blocks).
    cpu_weights: str = "int8"

    @property
    def default_language(self) -> str:
        return "en" if "en" in self.languages else self.languages[0]

    @property
    def files(self) -> tuple[str, ...]:
        """Every file a local checkpoint directory of this member must hold."""
        return (self.t3_weights, self.flow.weights, self.ve_weights, *self.tokenizer_files, "conds.pt")


def _original_hparams() -> Any:
    from chatterbox.models.t3.modules.t3_config import T3Config

    return T3Config.english_only()


def _multilingual_hparams() -> Any:
    from chatterbox.models.t3.modules.t3_config import T3Config

    return T3Config.multilingual()


def _turbo_hparams() -> Any:
    # As upstream's ChatterboxTurboTTS.from_local sets them.
    from chatterbox.models.t3.modules.t3_config import T3Config

    hp = T3Config(text_tokens_dict_size=50276)
    hp.llama_config_name = "GPT2_medium"
    hp.speech_tokens_dict_size = 6563
    hp.input_pos_emb = None
    hp.speech_cond_prompt_len = 375
    hp.use_perceiver_resampler = False
    hp.emotion_adv = False
    return hp


ORIGINAL = Family(
    name="original",
    summary="Chatterbox: 520M Llama T3 with CFG, 10-step flow with CFG; English",
    hub_repo="ResembleAI/chatterbox",
    t3_weights="t3_cfg.safetensors",
    hparams=_original_hparams,
    cfg=True,
    text_markers=True,
    bos_repeats=2,
    load_tokenizer=lambda ckpt: tokenizers.load_char_tokenizer(ckpt / "tokenizer.json"),
    write_tokenizer=lambda ckpt: tokenizers.write_char_tokenizer(ckpt / "tokenizer.json"),
    tokenizer_files=("tokenizer.json",),
    languages=("en",),
    punctuation=PUNC_NORM,
    sampling=Sampling(temperature=0.8, repetition_penalty=1.2, top_p=1.0, min_p=0.05, cfg_weight=0.5),
    flow=FlowSpec(weights="s3gen.safetensors", meanflow=False, steps=10, cfg_rate=0.7),
)

TURBO = Family(
    name="turbo",
    summary="Chatterbox-Turbo: 350M GPT-2 T3 without CFG, 2-step meanflow decoder; English, tags",
    hub_repo="ResembleAI/chatterbox-turbo",
    t3_weights="t3_turbo_v1.safetensors",
    hparams=_turbo_hparams,
    cfg=False,
    text_markers=False,
    bos_repeats=1,
    load_tokenizer=tokenizers.load_gpt2_tokenizer,
    write_tokenizer=tokenizers.write_gpt2_tokenizer,
    # The vocabulary itself is tokenizer.json or vocab.json + merges.txt: the loader checks which.
    tokenizer_files=("tokenizer_config.json",),
    languages=("en",),
    punctuation=TURBO_PUNC_NORM,
    sampling=Sampling(temperature=0.8, repetition_penalty=1.2, top_p=0.95, top_k=1000, exaggeration=0.0,
                      penalty_last=True, bos_in_history=False),
    # Upstream's generate() runs 2 meanflow steps; the decoder is distilled for one-step decoding
    # (Resemble's model card: "from 10 steps to just one"). One step halves the estimator's work
    # (`chatterd bench knobs --family turbo`: vocoder RTF 1.7 -> 1.1, log-mel distance 0.470 -> 0.471).
    flow=FlowSpec(weights="s3gen_meanflow.safetensors", meanflow=True, steps=2, cfg_rate=0.0, tail_silence=3,
                  fewest_steps=1),
    t3_prompt_seconds=15.0,
    min_reference_seconds=5.0,
    reference_lufs=-27.0,
    hub_extras=("tokenizer.json", "vocab.json", "merges.txt", "added_tokens.json", "special_tokens_map.json"),
    # int4 weights: a step in about 0.7x int8's time, the logits further from fp32's (`chatterd bench
    # t3`: mean KL 0.3 nats against int8's 0.003 on random weights; llama.cpp's q4_0 is the same
    # format). With CFG the error grows (0.8-1.2 nats): the original and multilingual keep int8.
    cpu_weights="int4",
)

# The original's architecture (Llama T3 with CFG, its prefix layout, its flow decoder) with its own
# weights, tokenizer, languages and sampling defaults.
MULTILINGUAL = replace(
    ORIGINAL,
    name="multilingual",
    summary="Chatterbox Multilingual: the original architecture speaking 23 languages",
    t3_weights="t3_mtl23ls_v2.safetensors",
    hparams=_multilingual_hparams,
    load_tokenizer=tokenizers.load_mtl_tokenizer,
    write_tokenizer=tokenizers.write_mtl_tokenizer,
    tokenizer_files=(tokenizers.MTL_TOKENIZER_FILE, tokenizers.CANGJIE_FILE),
    languages=tuple(MTL_LANGUAGES),
    sampling=replace(ORIGINAL.sampling, repetition_penalty=2.0),
    flow=replace(ORIGINAL.flow, weights="s3gen.pt"),
    ve_weights="ve.pt",
)

FAMILIES: dict[str, Family] = {f.name: f for f in (TURBO, ORIGINAL, MULTILINGUAL)}
# The member a config gets when it names none: the lowest first audio on every device measured
# (README "Choosing a model"): a third of the original's T3 work per token, 2 flow passes per chunk
# instead of 20.
DEFAULT_FAMILY = TURBO.name


def family(name: str) -> Family:
    try:
        return FAMILIES[name]
    except KeyError:
        raise TTSError(f"unknown model family {name!r}; known: {', '.join(FAMILIES)}") from None
