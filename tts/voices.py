"""Voices: the checkpoint's built-in voice and reference wavs, turned into cached conditionals.

A voice's conditionals (speaker embedding, T3 prompt tokens, S3Gen prompt mels and x-vector) are
computed once from its wav, exactly as the loaded family's upstream `prepare_conditionals` does
(Turbo: at least 5 s, loudness-normalised, a 15 s T3 prompt), and stored on disk keyed by the
family and the wav's content, so a restart or a renamed file costs nothing. T3's conditioning
prefix (the original: speaker + perceiver-resampled prompt + emotion, 34 positions; Turbo:
speaker + the full 375-token prompt) is computed once per voice.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from tts.errors import UnknownVoice, VoiceError
from tts.families import Family
from tts.vocoder import VoicePrompt

log = logging.getLogger(__name__)

DEFAULT_VOICE = "default"
DEC_COND_SECONDS = 10  # S3Gen prompt: first 10 s (upstream DEC_COND_LEN); T3's is the family's


@dataclass(frozen=True)
class Voice:
    name: str
    cond_emb: Tensor  # (1, C, dim): T3's conditioning prefix
    prompt: VoicePrompt  # S3Gen's prompt


class VoiceBank:
    """Name -> Voice, all prepared at load so requests never pay for conditioning.

    `unusable`: configured voices that could not be prepared (name -> why); they are not offered,
    and a request naming one gets a VoiceError with the reason instead of an unknown-voice error.
    """

    def __init__(self, voices: dict[str, Voice], unusable: dict[str, str] | None = None) -> None:
        self._voices = voices
        self.unusable = dict(unusable or {})

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._voices)

    def __iter__(self) -> Iterator[Voice]:
        return iter(self._voices.values())

    def get(self, name: str | None) -> Voice:
        voice = self._voices.get(name or DEFAULT_VOICE)
        if voice is None:
            if (name or DEFAULT_VOICE) in self.unusable:
                raise VoiceError(f"voice {name!r} is unusable: {self.unusable[name or DEFAULT_VOICE]}")
            raise UnknownVoice(name or DEFAULT_VOICE, self.names)
        return voice


def build_voice(name: str, conds: dict[str, Any], t3: Any, *, exaggeration: float,
                prompt_tokens: int | None, device: torch.device) -> Voice:
    """Turn stored conditionals ({"t3": T3Cond fields, "gen": S3Gen ref dict}) into a ready Voice."""
    # `t3`: upstream's chatterbox T3 module (untyped, so Any at this boundary).
    from chatterbox.models.t3.modules.cond_enc import T3Cond

    fields = dict(conds["t3"])
    fields["emotion_adv"] = exaggeration * torch.ones(1, 1, 1)  # unused by a family without emotion input
    fields["cond_prompt_speech_emb"] = None  # recomputed by prepare_conditioning
    t3_cond = T3Cond(**fields).to(device=device)
    with torch.inference_mode():
        cond_emb = t3.prepare_conditioning(t3_cond).float()  # (1, C, dim)
    prompt = VoicePrompt.from_ref_dict(conds["gen"], prompt_tokens, device)
    return Voice(name, cond_emb, prompt)


def load_conds_file(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
    return data


def conditionals_from_wav(wav_path: Path, *, family: Family, ve: Any, s3gen: Any, t3_prompt_len: int,
                          cache_dir: Path | None, model_id: str) -> dict[str, Any]:
    """Compute (or read from the disk cache) the conditionals of a reference wav for `family`."""
    # `ve`, `s3gen`: upstream's chatterbox VoiceEncoder and S3Gen modules (untyped).
    try:
        content = wav_path.read_bytes()
    except OSError as exc:
        raise VoiceError(f"cannot read voice file {wav_path}: {exc.strerror or exc}") from exc
    key = hashlib.sha256(content + f"{family.name}:{model_id}".encode()).hexdigest()[:32]
    cached = cache_dir / "voices" / f"{family.name}-{key}.pt" if cache_dir else None
    if cached is not None and cached.exists():
        log.info("voice %s: conditionals from cache %s", wav_path.name, cached)
        return load_conds_file(cached)

    import librosa
    from chatterbox.models.s3gen import S3GEN_SR
    from chatterbox.models.s3tokenizer import S3_SR

    try:
        ref_24k, _ = librosa.load(str(wav_path), sr=S3GEN_SR)
    except Exception as exc:  # librosa raises many types for unreadable audio
        raise VoiceError(f"cannot decode voice file {wav_path}: {exc}") from exc
    seconds = len(ref_24k) / S3GEN_SR
    if seconds < family.min_reference_seconds:
        raise VoiceError(
            f"voice file {wav_path} is {seconds:.1f} s long; the {family.name} model needs at least "
            f"{family.min_reference_seconds:g} s of reference speech (5-10 s of one clean speaker)"
        )
    if family.reference_lufs is not None:
        ref_24k = _normalise_loudness(ref_24k, S3GEN_SR, family.reference_lufs)
    ref_16k = librosa.resample(ref_24k, orig_sr=S3GEN_SR, target_sr=S3_SR)
    device = next(s3gen.parameters()).device
    with torch.inference_mode():
        gen = s3gen.embed_ref(ref_24k[: DEC_COND_SECONDS * S3GEN_SR], S3GEN_SR, device=device)
        prompt = ref_16k[: int(family.t3_prompt_seconds * S3_SR)]
        tokens, _ = s3gen.tokenizer.forward([prompt], max_len=t3_prompt_len)
        ve_embed = torch.from_numpy(ve.embeds_from_wavs([ref_16k], sample_rate=S3_SR)).mean(0, keepdim=True)
    conds = {
        "t3": {"speaker_emb": ve_embed.cpu(), "cond_prompt_speech_tokens": torch.atleast_2d(tokens).cpu(),
               "emotion_adv": 0.5 * torch.ones(1, 1, 1)},
        "gen": {k: v.cpu() if torch.is_tensor(v) else v for k, v in gen.items()},
    }
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        torch.save(conds, cached)
        log.info("voice %s: conditionals cached at %s", wav_path.name, cached)
    return conds


def _normalise_loudness(wav: Any, sr: int, target_lufs: float) -> Any:
    """Upstream Turbo's norm_loudness: gain to `target_lufs` integrated loudness, skipped when unmeasurable."""
    import math

    import pyloudnorm

    try:
        loudness = pyloudnorm.Meter(sr).integrated_loudness(wav)
    except ValueError:  # shorter than one gating block
        return wav
    gain = 10.0 ** ((target_lufs - loudness) / 20.0)
    return wav * gain if math.isfinite(gain) and gain > 0 else wav
