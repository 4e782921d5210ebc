"""Per-device defaults: the settings a config leaves null, chosen for the device the engine runs on.

* `realtime` (a CPU): T3 pipelined on its own cores, a 50-token voice prompt and 25 tokens of left
  context in every vocoder call, a 9-token first chunk behind only 25 of the prompt's tokens (its
  flow window is then 74 frames instead of 124), chunks from 8 tokens up that also run behind
  those 25 while less than a second of audio is queued (lean chunks: the next one is ready before
  the queue runs dry), and the fewest flow steps the family's decoder is made for (Turbo's
  meanflow: one): what brings Turbo closest to playback speed on two cores (README "Performance";
  `chatterd bench parts`, `chatterd bench knobs --family turbo`, `chatterd bench daemon`). The
  first chunk is as long as the second takes to make (T3's next 8 tokens, then their vocoding,
  each on one core: ~0.33 s on an AVX-512 EPYC): a 6-token one played out ~50 ms before it.
* `fidelity` (CUDA): the full voice prompt, 50 tokens of context, a 10-token first chunk, chunks
  from 25 tokens up, never lean; T3 on its own CUDA stream. A GPU has the headroom, so nothing
  trades output distance for speed.

Every field is overridable in the config; the engine logs the resolved settings at start. The
weight dtypes have their own `auto` (tts.loading: pick_dtype, pick_vocoder_dtype).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tts.config import TTSConfig
from tts.families import Family


@dataclass(frozen=True)
class Settings:
    """The knobs a profile decides, resolved: the config's value where it set one, else the profile's."""

    profile: str
    pipeline: bool
    prompt_tokens: int | None  # None: the voice's whole prompt
    first_prompt_tokens: int | None  # the first chunk's; None: prompt_tokens
    context_tokens: int
    first_chunk_tokens: int
    chunk_tokens: int  # the schedule's smallest chunk after the first
    lean_below_s: float  # queued audio under which a chunk runs behind first_prompt_tokens
    flow_steps: int
    flow_cfg_rate: float


_PROFILES: dict[str, dict[str, object]] = {
    "realtime": {"pipeline": True, "prompt_tokens": 50, "first_prompt_tokens": 25, "context_tokens": 25,
                 "first_chunk_tokens": 9, "chunk_tokens": 8, "lean_below_s": 1.0, "fewest_flow_steps": True},
    "fidelity": {"pipeline": True, "prompt_tokens": None, "first_prompt_tokens": None, "context_tokens": 50,
                 "first_chunk_tokens": 10, "chunk_tokens": 25, "lean_below_s": 0.0, "fewest_flow_steps": False},
}


def profile_name(device: torch.device) -> str:
    return "fidelity" if device.type == "cuda" else "realtime"


def resolve(config: TTSConfig, family: Family, device: torch.device) -> Settings:
    name = profile_name(device)
    profile = _PROFILES[name]

    def pick(key: str) -> object:
        value = getattr(config, key)
        return profile[key] if value is None else value

    return Settings(
        profile=name,
        pipeline=bool(pick("pipeline")),
        prompt_tokens=pick("prompt_tokens"),  # type: ignore[arg-type]
        first_prompt_tokens=pick("first_prompt_tokens"),  # type: ignore[arg-type]
        context_tokens=int(pick("context_tokens")),  # type: ignore[call-overload]
        first_chunk_tokens=int(pick("first_chunk_tokens")),  # type: ignore[call-overload]
        chunk_tokens=int(pick("chunk_tokens")),  # type: ignore[call-overload]
        lean_below_s=float(pick("lean_below_s")),  # type: ignore[arg-type]
        flow_steps=config.flow_steps or (family.flow.fewest_steps if profile["fewest_flow_steps"] else None)
        or family.flow.steps,
        flow_cfg_rate=family.flow.cfg_rate if config.flow_cfg_rate is None else config.flow_cfg_rate,
    )
