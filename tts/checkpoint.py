"""Finding, validating and making Chatterbox checkpoints.

A checkpoint is a directory with the files a family's upstream `from_local` reads (`Family.files`).
It comes from the Hugging Face hub (a repo id such as `ResembleAI/chatterbox-turbo`; none = the
family's own) or a local path. `make_random_checkpoint` writes a full-size, seeded, randomly
initialised one with the same layout, for tests and benchmarks on machines that cannot download the
real weights. `load_weights` is the one way weights get into upstream's modules.
"""

from __future__ import annotations

import logging
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from tts.errors import CheckpointError
from tts.families import FAMILIES, S3GEN_VOCAB, Family

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

RANDOM_MARKER = "RANDOM_WEIGHTS.txt"


def resolve_checkpoint(checkpoint: str | None, fam: Family) -> Path:
    """A local directory holding every file of `fam`'s checkpoint, downloading from the hub if needed.

    `checkpoint`: a directory, a Hugging Face repo id, or None for the family's own hub repository.
    """
    checkpoint = checkpoint or fam.hub_repo
    path = Path(checkpoint).expanduser()
    if path.is_dir() or checkpoint.startswith((".", "/", "~")):
        return _validate_dir(path, fam)
    if checkpoint.count("/") != 1:
        raise CheckpointError(
            f"tts.checkpoint {checkpoint!r} is neither an existing directory nor a Hugging Face repo id "
            "of the form 'owner/name'"
        )
    return _download(checkpoint, fam)


def is_random_checkpoint(directory: Path) -> bool:
    return (directory / RANDOM_MARKER).exists()


def checkpoint_files(directory: Path, fam: Family) -> dict[str, list[int]]:
    """Each of the family's files in `directory` by size and modification time (what identifies it cheaply)."""
    return {name: [stat.st_size, stat.st_mtime_ns] for name in fam.files
            if (path := directory / name).exists() and (stat := path.stat())}


def _validate_dir(path: Path, fam: Family) -> Path:
    if not path.is_dir():
        raise CheckpointError(f"checkpoint directory {path} does not exist")
    missing = [name for name in fam.files if not (path / name).is_file()]
    if missing:
        hint = ""
        for other in FAMILIES.values():
            if other is not fam and all((path / name).is_file() for name in other.files):
                hint = f"; it looks like a {other.name} checkpoint: set tts.model: {other.name}"
        raise CheckpointError(
            f"checkpoint directory {path} lacks {', '.join(missing)}, which the {fam.name} model expects "
            f"(it needs {', '.join(fam.files)}){hint}"
        )
    return path


def _download(repo_id: str, fam: Family) -> Path:
    # huggingface_hub is imported here: it is only needed for hub ids.
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError

    def fetch_all(local_only: bool) -> Path:
        local = None
        names = (*fam.files, *fam.hub_extras)
        for n, name in enumerate(names, start=1):
            if not local_only:
                log.info("fetching %s from %s (file %d of %d)", name, repo_id, n, len(names))
            try:
                local = Path(hf_hub_download(repo_id=repo_id, filename=name, local_files_only=local_only))
            except (EntryNotFoundError, LocalEntryNotFoundError):
                if name not in fam.hub_extras:
                    raise
        assert local is not None
        return local.parent

    try:
        return _validate_dir(fetch_all(local_only=True), fam)  # already in the Hugging Face cache
    except (LocalEntryNotFoundError, OSError, CheckpointError):
        pass
    help_text = (
        f"On a machine that is online, download them with `hf download {repo_id} "
        f"{' '.join(fam.files)} --local-dir /var/lib/chatterd/{fam.name}`, copy that directory here, "
        "and set `tts.checkpoint` in the config to its path. "
        f"For tests without the real weights: `chatterd make-checkpoint --random --model {fam.name} DIR`."
    )
    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    if constants.HF_HUB_OFFLINE or not _reachable(host):
        raise CheckpointError(
            f"the {fam.name} weights '{repo_id}' are not in the local Hugging Face cache and {host} "
            f"cannot be reached (offline). {help_text}"
        )
    try:
        return _validate_dir(fetch_all(local_only=False), fam)
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as exc:
        raise CheckpointError(
            f"cannot fetch the {fam.name} weights '{repo_id}' from {host} ({type(exc).__name__}: {exc}). "
            f"{help_text}"
        ) from exc


# S3Gen buffers that upstream's checkpoints do not store (recomputed at construction).
_OPTIONAL_KEYS = ("tokenizer._mel_filters", "tokenizer.window", "trim_fade")


def load_weights(module: torch.nn.Module, path: Path, *, strict: bool = True) -> None:
    """Load a safetensors or torch (.pt) state dict into an upstream module, with errors that name the file.

    `strict`: unexpected keys are errors too (missing keys always are, except S3Gen's recomputed buffers).
    """
    import torch

    try:
        if path.suffix == ".pt":
            state: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
        else:
            from safetensors.torch import load_file

            state = load_file(str(path))
    except Exception as exc:  # safetensors and torch raise their own error types
        raise CheckpointError(f"{path}: cannot read weights ({exc})") from exc
    if "model" in state:  # some T3 exports nest the state dict
        state = state["model"][0]
    try:
        missing, unexpected = module.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatch
        raise CheckpointError(f"{path}: weights do not fit the model: {exc}") from exc
    missing = [k for k in missing if not k.endswith(_OPTIONAL_KEYS)]
    if missing or (strict and unexpected):
        raise CheckpointError(
            f"{path}: weights do not match the model (missing {len(missing)}: {missing[:3]}, "
            f"unexpected {len(unexpected)}: {unexpected[:3]})"
        )


def _reachable(host: str, port: int = 443, timeout: float = 5.0) -> bool:
    """One quick TCP connect, so an offline machine fails in seconds, not after the hub's retries."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def make_random_checkpoint(out_dir: Path, fam: Family, seed: int = 0) -> None:
    """Write a full-size, seeded, random-weight checkpoint of `fam` with its real file layout.

    Compute cost equals the real model's; the audio is noise. T3's speech head is edited so that it
    never proposes ids the vocoder cannot take: rows (and biases) >= S3GEN_VOCAB are zeroed and the
    valid rows scaled up, so a valid id's logit always dominates (even for code that does not
    filter, like the seed's). The tokenizer is built to the real vocabulary size and loads through
    the same code as the real one.
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
        if name.endswith(".pt"):
            torch.save(state, out_dir / name)
        else:
            save_file(state, str(out_dir / name))

    with torch.inference_mode():
        t3 = T3(fam.hparams()).eval()
        head = t3.speech_head  # (V, dim), Turbo's with a bias
        head.weight[S3GEN_VOCAB:] = 0
        head.weight[:S3GEN_VOCAB] *= 10.0
        if head.bias is not None:
            head.bias[S3GEN_VOCAB:] = 0
        save(t3, fam.t3_weights)
        s3gen = S3Gen(meanflow=fam.flow.meanflow).eval()
        save(s3gen, fam.flow.weights)
        ve = VoiceEncoder().eval()
        save(ve, fam.ve_weights)
        fam.write_tokenizer(out_dir)

        # The built-in voice: conditionals computed from a reference wav exactly as upstream does.
        wav_path = out_dir / "reference.wav"
        write_reference_wav(wav_path)
        ref_24k, _ = librosa.load(str(wav_path), sr=S3GEN_SR)
        ref_16k = librosa.resample(ref_24k, orig_sr=S3GEN_SR, target_sr=S3_SR)
        gen = s3gen.embed_ref(ref_24k[: 10 * S3GEN_SR], S3GEN_SR, device="cpu")
        prompt_tokens, _ = s3gen.tokenizer.forward([ref_16k[: int(fam.t3_prompt_seconds * S3_SR)]],
                                                   max_len=t3.hp.speech_cond_prompt_len)
        ve_embed = torch.from_numpy(ve.embeds_from_wavs([ref_16k], sample_rate=S3_SR)).mean(0, keepdim=True)
        t3_cond = T3Cond(
            speaker_emb=ve_embed,
            cond_prompt_speech_tokens=torch.atleast_2d(prompt_tokens),
            emotion_adv=0.5 * torch.ones(1, 1, 1),
        )
        torch.save({"t3": t3_cond.__dict__, "gen": gen}, out_dir / "conds.pt")

    (out_dir / RANDOM_MARKER).write_text(
        f"Random weights (seed {seed}) of the {fam.name} model, made by "
        f"`chatterd make-checkpoint --random --model {fam.name}`.\n"
        f"Full-size architecture ({fam.summary}): compute cost matches the real model, but the audio is noise.\n"
        f"For real speech, leave tts.checkpoint null ({fam.hub_repo}) or point it at a downloaded copy.\n"
    )
    log.info("wrote random %s checkpoint to %s", fam.name, out_dir)


# Long enough (about 17 s at espeak's 150 words per minute) for Turbo's 15 s speech prompt.
REFERENCE_TEXT = (
    "The front door is open. The kitchen lights are on, and the weather today is mild with light wind. "
    "Tomorrow morning the garden sprinklers will run at six, the heating will warm the living room before "
    "breakfast, and the washing machine will finish its cycle a little after seven."
)


def write_reference_wav(path: Path) -> None:
    """A ~17 s speech-like reference: espeak-ng when installed, else a synthetic glottal-pulse vowel train."""
    espeak = shutil.which("espeak-ng")
    if espeak:
        with tempfile.TemporaryDirectory() as tmp:
            raw = Path(tmp) / "ref.wav"
            subprocess.run([espeak, "-s", "150", "-w", str(raw), REFERENCE_TEXT], check=True,
                           capture_output=True)
            shutil.copyfile(raw, path)
        return
    _write_synthetic_reference(path)


def _write_synthetic_reference(path: Path, sr: int = 24000, seconds: float = 17.0) -> None:
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
