"""Loading a family member: device and dtype, checkpoint, weights, tokenizer and voices.

`load_model(config)` returns the parts the streaming engine serves from; it knows which files and
upstream modules each family has (from its `tts.families.Family`), never how to decode them.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tts.checkpoint import is_random_checkpoint, load_weights, resolve_checkpoint
from tts.config import QUANTIZED_WEIGHTS, TTSConfig
from tts.errors import DeviceError, VoiceError
from tts.families import Family, family
from tts.profiles import Settings, resolve
from tts.t3 import cast_for_decoding
from tts.tokenizers import TextTokenizer
from tts.voices import DEFAULT_VOICE, Voice, VoiceBank, build_voice, conditionals_from_wav, load_conds_file

log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    """Upstream's modules with the family's weights, on their device, and the voices prepared for them."""

    family: Family
    t3: Any  # upstream's chatterbox T3 (untyped)
    s3gen: Any  # upstream's chatterbox S3Gen
    tokenizer: TextTokenizer
    voices: VoiceBank
    device: torch.device
    dtype: torch.dtype  # T3's compute dtype
    quant: str | None  # T3's linears quantised: int8 | int4 (tts.t3.quantize_layers), None = float
    checkpoint_dir: Path
    settings: Settings  # the device profile's choices where the config left them null

    @property
    def random_weights(self) -> bool:
        return is_random_checkpoint(self.checkpoint_dir)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"tts.device is {name} but no CUDA device is available; use auto or cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise DeviceError(f"tts.device is {name} but only {torch.cuda.device_count()} CUDA device(s) exist")
    return device


def cpu_flags() -> frozenset[str]:
    """This CPU's feature flags (/proc/cpuinfo), empty where unreadable."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_has_bf16() -> bool:
    return bool({"avx512_bf16", "amx_bf16"} & cpu_flags())


def pick_dtype(name: str, device: torch.device, fam: Family) -> tuple[torch.dtype, str | None]:
    """(T3 compute dtype, quantised weight format or None). auto: bf16 on CUDA with bf16 support,
    fp16 on older CUDA; on a CPU the family's `cpu_weights` (int8 or int4 blocks: T3 is bound by
    reading its weights, int8 reads a quarter of fp32's bytes, int4 an eighth)."""
    if name in QUANTIZED_WEIGHTS:
        if device.type != "cpu":
            raise DeviceError(f"tts.dtype {name} is a CPU path; use bfloat16 or float16 on CUDA")
        return torch.float32, name
    if name != "auto":
        return getattr(torch, name), None
    if device.type == "cuda":
        return (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16), None
    return torch.float32, fam.cpu_weights


def pick_vocoder_dtype(name: str, device: torch.device) -> torch.dtype:
    """The flow estimator's weight dtype. auto: bf16 on a CPU with native bf16 matmuls (the estimator
    is compute-bound there: ~1.8-2x), fp32 elsewhere (on a GPU it is not the bottleneck)."""
    if name != "auto":
        return getattr(torch, name)  # type: ignore[no-any-return]
    return torch.bfloat16 if device.type == "cpu" and cpu_has_bf16() else torch.float32


def pick_flow_runtime(name: str, device: torch.device, compile: bool) -> str:
    """The flow's (token encoder and estimator) runtime. auto: ONNX Runtime on a CPU with AVX-512
    (1.9-2.2x torch's fp32 there at the same output; tts.onnx_flow) unless compiling, torch
    elsewhere (CUDA: compiled graphs; AVX2: under 1.5x)."""
    if name == "onnxruntime":
        if device.type != "cpu" or compile:
            raise DeviceError("tts.flow_runtime onnxruntime is a CPU path without compile; use torch")
        return name
    if name == "torch":
        return name
    if device.type != "cpu" or compile or "avx512f" not in cpu_flags():
        return "torch"
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return "torch"
    return "onnxruntime"


def load_s3gen(fam: Family, ckpt: Path) -> Any:
    """Upstream's S3Gen with the family's decoder and its checkpoint's fp32 weights (on the CPU)."""
    from chatterbox.models.s3gen import S3Gen

    s3gen = S3Gen(meanflow=fam.flow.meanflow)
    load_weights(s3gen, ckpt / fam.flow.weights, strict=False)
    return s3gen


def load_model(config: TTSConfig) -> LoadedModel:
    """Resolve the checkpoint (hub id, directory, or the family's repository), load and validate every part."""
    from chatterbox.models.t3 import T3
    from chatterbox.models.voice_encoder import VoiceEncoder

    fam = family(config.model)
    if config.threads:
        torch.set_num_threads(config.threads)
    if config.cache_dir:
        # Inductor's compiled kernels survive restarts here instead of under /tmp.
        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(Path(config.cache_dir).resolve() / "inductor"))
    device = pick_device(config.device)
    dtype, quant = pick_dtype(config.dtype, device, fam)
    settings = resolve(config, fam, device)
    ckpt = resolve_checkpoint(config.checkpoint, fam)
    t0 = time.perf_counter()

    t3 = T3(fam.hparams())
    load_weights(t3, ckpt / fam.t3_weights)
    s3gen = load_s3gen(fam, ckpt)
    ve = VoiceEncoder()
    load_weights(ve, ckpt / fam.ve_weights)
    tokenizer = fam.load_tokenizer(ckpt)
    t3.to(device).eval()
    s3gen.to(device).eval()
    ve.to(device).eval()

    exaggeration = config.exaggeration if config.exaggeration is not None else fam.sampling.exaggeration
    voices: dict[str, Voice] = {
        DEFAULT_VOICE: build_voice(DEFAULT_VOICE, load_conds_file(ckpt / "conds.pt"), t3, exaggeration=exaggeration,
                                   prompt_tokens=settings.prompt_tokens, device=device)
    }
    cache_dir = Path(config.cache_dir) if config.cache_dir else None
    unusable: dict[str, str] = {}
    for name, wav in config.voices.items():
        try:
            conds = conditionals_from_wav(Path(wav), family=fam, ve=ve, s3gen=s3gen,
                                          t3_prompt_len=t3.hp.speech_cond_prompt_len, cache_dir=cache_dir,
                                          model_id=str(ckpt))
        except VoiceError as exc:  # one bad reference must not keep the daemon from speaking
            log.error("voice %s is unusable and not offered: %s", name, exc)
            unusable[name] = str(exc)
            continue
        voices[name] = build_voice(name, conds, t3, exaggeration=exaggeration,
                                   prompt_tokens=settings.prompt_tokens, device=device)
    del ve  # only needed to prepare voices

    # Conditioning ran in fp32 above; now the decoding weights take their serving dtype.
    if quant is None and dtype != torch.float32:
        cast_for_decoding(t3, dtype)
    model = LoadedModel(fam, t3, s3gen, tokenizer, VoiceBank(voices, unusable), device, dtype, quant, ckpt, settings)
    log.info("loaded the %s model from %s in %.1f s%s", fam.name, ckpt, time.perf_counter() - t0,
             " (RANDOM WEIGHTS: output is noise)" if model.random_weights else "")
    return model
