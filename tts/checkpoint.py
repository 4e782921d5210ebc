"""Finding, validating and making Chatterbox checkpoints.

A checkpoint is a directory with the five files upstream `ChatterboxTTS.from_local` reads. It
comes from the Hugging Face hub (a repo id such as `ResembleAI/chatterbox`) or a local path.
`make_random_checkpoint` writes a full-size, seeded, randomly initialised one with the same layout,
for tests and benchmarks on machines that cannot download the real weights.
"""

from __future__ import annotations

import logging
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from urllib.parse import urlparse

from tts.errors import CheckpointError
from tts.tokenizers import write_char_tokenizer as _write_char_tokenizer

log = logging.getLogger(__name__)

CHECKPOINT_FILES = ("t3_cfg.safetensors", "s3gen.safetensors", "ve.safetensors", "tokenizer.json", "conds.pt")
RANDOM_MARKER = "RANDOM_WEIGHTS.txt"
# S3Gen's speech-token vocabulary; T3 ids at or above it (start/stop/padding) cannot be vocoded.
S3GEN_VOCAB = 6561


def resolve_checkpoint(checkpoint: str) -> Path:
    """Return a local directory holding every checkpoint file, downloading from the hub if needed."""
    path = Path(checkpoint).expanduser()
    if path.is_dir() or checkpoint.startswith((".", "/", "~")):
        return _validate_dir(path)
    if checkpoint.count("/") != 1:
        raise CheckpointError(
            f"tts.checkpoint {checkpoint!r} is neither an existing directory nor a Hugging Face repo id "
            "of the form 'owner/name'"
        )
    return _download(checkpoint)


def is_random_checkpoint(directory: Path) -> bool:
    return (directory / RANDOM_MARKER).exists()


def _validate_dir(path: Path) -> Path:
    if not path.is_dir():
        raise CheckpointError(f"checkpoint directory {path} does not exist")
    missing = [name for name in CHECKPOINT_FILES if not (path / name).is_file()]
    if missing:
        raise CheckpointError(
            f"checkpoint directory {path} lacks {', '.join(missing)}; it needs {', '.join(CHECKPOINT_FILES)}"
        )
    return path


def _download(repo_id: str) -> Path:
    # huggingface_hub is imported here: it is only needed for hub ids.
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    def fetch_all(local_only: bool) -> Path:
        local = None
        for name in CHECKPOINT_FILES:
            local = Path(hf_hub_download(repo_id=repo_id, filename=name, local_files_only=local_only))
        assert local is not None
        return local.parent

    try:
        return _validate_dir(fetch_all(local_only=True))  # already in the Hugging Face cache
    except (LocalEntryNotFoundError, OSError):
        pass
    help_text = (
        f"On a machine that is online, download them with `hf download {repo_id} "
        f"{' '.join(CHECKPOINT_FILES)} --local-dir /var/lib/chatterd/chatterbox`, copy that directory here, "
        "and set `tts.checkpoint` in the config to its path. "
        "For tests without the real weights: `chatterd make-checkpoint --random DIR`."
    )
    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    if constants.HF_HUB_OFFLINE or not _reachable(host):
        raise CheckpointError(
            f"the Chatterbox weights '{repo_id}' are not in the local Hugging Face cache and {host} "
            f"cannot be reached (offline). {help_text}"
        )
    try:
        return _validate_dir(fetch_all(local_only=False))
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as exc:
        raise CheckpointError(
            f"cannot fetch the Chatterbox weights '{repo_id}' from {host} ({type(exc).__name__}: {exc}). "
            f"{help_text}"
        ) from exc


def _reachable(host: str, port: int = 443, timeout: float = 5.0) -> bool:
    """One quick TCP connect, so an offline machine fails in seconds, not after the hub's retries."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def make_random_checkpoint(out_dir: Path, seed: int = 0) -> None:
    """Write a full-size, seeded, random-weight checkpoint with the real file layout.

    Compute cost equals the real model's; the audio is noise. T3's speech head is edited so that it
    never proposes ids the vocoder cannot take: rows >= 6561 are zeroed and the valid rows scaled up,
    so a valid id's logit always dominates (even for code that does not filter, like the seed's).
    """
    import librosa
    import torch
    from chatterbox.models.s3gen import S3GEN_SR, S3Gen
    from chatterbox.models.s3tokenizer import S3_SR
    from chatterbox.models.t3 import T3
    from chatterbox.models.t3.modules.cond_enc import T3Cond
    from chatterbox.models.voice_encoder import VoiceEncoder
    from safetensors.torch import save_file

    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)

    def save(module: torch.nn.Module, name: str) -> None:
        # clone: safetensors refuses tensors that share storage
        state = {k: v.detach().clone().contiguous() for k, v in module.state_dict().items()}
        save_file(state, str(out_dir / name))

    with torch.inference_mode():
        t3 = T3().eval()
        head = t3.speech_head.weight  # (8194, 1024)
        head[S3GEN_VOCAB:] = 0
        head[:S3GEN_VOCAB] *= 10.0
        save(t3, "t3_cfg.safetensors")
        s3gen = S3Gen().eval()
        save(s3gen, "s3gen.safetensors")
        ve = VoiceEncoder().eval()
        save(ve, "ve.safetensors")
        _write_char_tokenizer(out_dir / "tokenizer.json")

        # The built-in voice: conditionals computed from a reference wav exactly as upstream does.
        wav_path = out_dir / "reference.wav"
        write_reference_wav(wav_path)
        ref_24k, _ = librosa.load(str(wav_path), sr=S3GEN_SR)
        ref_16k = librosa.resample(ref_24k, orig_sr=S3GEN_SR, target_sr=S3_SR)
        gen = s3gen.embed_ref(ref_24k[: 10 * S3GEN_SR], S3GEN_SR, device="cpu")
        prompt_tokens, _ = s3gen.tokenizer.forward([ref_16k[: 6 * S3_SR]],
                                                   max_len=t3.hp.speech_cond_prompt_len)
        ve_embed = torch.from_numpy(ve.embeds_from_wavs([ref_16k], sample_rate=S3_SR)).mean(0, keepdim=True)
        t3_cond = T3Cond(
            speaker_emb=ve_embed,
            cond_prompt_speech_tokens=torch.atleast_2d(prompt_tokens),
            emotion_adv=0.5 * torch.ones(1, 1, 1),
        )
        torch.save({"t3": t3_cond.__dict__, "gen": gen}, out_dir / "conds.pt")

    (out_dir / RANDOM_MARKER).write_text(
        f"Random weights (seed {seed}) made by `chatterd make-checkpoint --random`.\n"
        "Full-size Chatterbox architecture: compute cost matches the real model, but the audio is noise.\n"
        "For real speech, point tts.checkpoint at ResembleAI/chatterbox or a downloaded copy.\n"
    )
    log.info("wrote random checkpoint to %s", out_dir)


REFERENCE_TEXT = (
    "The front door is open. The kitchen lights are on, and the weather today is mild with light wind."
)


def write_reference_wav(path: Path) -> None:
    """A ~6 s speech-like reference: espeak-ng when installed, else a synthetic glottal-pulse vowel train."""
    espeak = shutil.which("espeak-ng")
    if espeak:
        with tempfile.TemporaryDirectory() as tmp:
            raw = Path(tmp) / "ref.wav"
            subprocess.run([espeak, "-s", "150", "-w", str(raw), REFERENCE_TEXT], check=True,
                           capture_output=True)
            shutil.copyfile(raw, path)
        return
    _write_synthetic_reference(path)


def _write_synthetic_reference(path: Path, sr: int = 24000, seconds: float = 6.0) -> None:
    import wave

    import numpy as np

    t = np.arange(int(sr * seconds)) / sr
    f0 = 120 + 20 * np.sin(2 * np.pi * 0.5 * t)  # slowly gliding pitch
    phase = 2 * np.pi * np.cumsum(f0) / sr
    voice = sum(np.sin(k * phase) / k for k in range(1, 20))
    syllables = 0.5 * (1 + np.sin(2 * np.pi * 4 * t)) ** 2  # ~4 syllables per second
    pcm = (0.3 * voice * syllables / np.max(np.abs(voice))).astype(np.float32)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sr)
        w.writeframes((pcm * 32767).astype("<i2").tobytes())
