"""Streaming S3Gen: speech tokens in, PCM out, chunk by chunk with clean seams.

Each chunk re-runs the flow (token -> mel) on a window of `context` already-vocoded tokens plus
the new ones plus 3 lookahead tokens (the encoder's pre-lookahead; held back until the next chunk
or the end), with the voice prompt in front. The flow's noise comes from one buffer drawn per
request, so overlapping windows see the same noise for the same frames. HiFT (mel -> wav) runs on
the new mel frames behind a few cached mel frames of the previous chunk, with the previous chunk's
NSF source for those frames (`cache_source`), and each seam is cross-faded over `crossfade` samples
that the previous chunk held back.
"""

from __future__ import annotations

import ctypes
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from torch import Tensor

from tts import native
from tts.families import S3GEN_SILENCE, FlowSpec
from tts.flow_estimator import FlowEstimator

SAMPLE_RATE = 24000
MEL_PER_TOKEN = 2  # 25 Hz tokens -> 50 Hz mel frames
SAMPLES_PER_MEL = 480  # HiFT: 8*5*3 upsampling x iSTFT hop 4
LOOKAHEAD = 3  # tokens the flow encoder looks ahead (pre_lookahead_len)
HIFT_CONTEXT_MELS = 8  # cached mel frames (160 ms) fed to HiFT in front of each chunk, at least
# HiFT's input length (context + new frames) is rounded up to a multiple of HIFT_BUCKET_MELS by
# taking more of the cached frames as context (hift_context): oneDNN builds its convolution
# kernels per input length (~0.5 s for HiFT's ~60 convolutions at a new length on one core), and
# a chunk schedule that sizes chunks freely meets a new length at most chunks; in buckets a few
# lengths cover every chunk.
HIFT_BUCKET_MELS = 16


def hift_length(new_frames: int) -> int:
    """HiFT's input length for a chunk of `new_frames` mel frames behind a full cache."""
    return -(-(new_frames + HIFT_CONTEXT_MELS) // HIFT_BUCKET_MELS) * HIFT_BUCKET_MELS


def hift_context(new_frames: int, cached: int) -> int:
    """Cached mel frames to feed HiFT in front of `new_frames` new ones: those that round its input
    up to hift_length (at least HIFT_CONTEXT_MELS; more context only helps the seam), or whole
    buckets fewer while the cache holds fewer (right after a short first chunk), so the input is
    still a length warm-up ran; only a cache shorter than a bucket's remainder leaves it unrounded."""
    ctx = hift_length(new_frames) - new_frames
    while ctx > cached and ctx >= HIFT_BUCKET_MELS:
        ctx -= HIFT_BUCKET_MELS
    return min(ctx, cached)


@dataclass(frozen=True)
class VoicePrompt:
    """The S3Gen side of a voice: prompt tokens (1, P), prompt mels (1, 2P, 80), x-vector (1, 192)."""

    tokens: Tensor
    mels: Tensor
    xvector: Tensor

    @classmethod
    def from_ref_dict(cls, ref: dict[str, Tensor], max_tokens: int | None,
                      device: torch.device) -> VoicePrompt:
        tokens = torch.atleast_2d(ref["prompt_token"]).long()
        mels = ref["prompt_feat"]
        # Keep mel frames and tokens exactly 2:1 (the reference's mel may have one odd frame).
        n = min(tokens.shape[1], mels.shape[1] // MEL_PER_TOKEN)
        whole = cls(tokens[:, :n].to(device), mels[:, : n * MEL_PER_TOKEN].to(device=device, dtype=torch.float32),
                    torch.atleast_2d(ref["embedding"]).to(device=device, dtype=torch.float32))
        return whole.tail(max_tokens)

    def tail(self, max_tokens: int | None) -> VoicePrompt:
        """The prompt cut to its last `max_tokens` tokens (and their mel frames); itself if None or longer."""
        if max_tokens is None or max_tokens >= self.tokens.shape[1]:
            return self
        n = max_tokens
        return VoicePrompt(self.tokens[:, self.tokens.shape[1] - n:],
                           self.mels[:, self.mels.shape[1] - n * MEL_PER_TOKEN:], self.xvector)


class _Bf16Conv(torch.nn.Module):
    """A convolution with real bf16 weights between fp32 activations (HiFT's other ops stay fp32)."""

    def __init__(self, conv: torch.nn.Module) -> None:
        super().__init__()
        self.conv = conv.to(torch.bfloat16)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.conv(x.to(torch.bfloat16))
        return out.float()


class _Snake(torch.nn.Module):
    """Upstream's Snake activation, x + sin(alpha x)^2 / alpha, in fewer passes over x.

    On a CPU, fp32 tensors in either of HiFT's layouts (channel-major, or time-major between
    `_ChannelsLastConv`s) go through `tts/snake.c`: one read and one write per element and a
    polynomial sine, ~4x faster than ATen's (64 channels x 24,000 samples, one core: 1.1 against
    4.2 ms; HiFT's Snakes were ~11% of its time), within 2e-7 of upstream's output relative to its
    largest value. Elsewhere (CUDA, no C compiler) torch computes it with two allocations instead
    of upstream's five (the sine and square in place, the rest one addcmul): the same output.
    """

    alpha: Tensor
    inv_alpha: Tensor

    def __init__(self, snake: Any, fused: bool = False) -> None:
        # `snake`: one of upstream's hifigan.Snake modules (untyped, so Any at this boundary);
        # `fused`: through `snake_kernel()` where it can (a flag, not the ctypes function: the
        # module stays copyable).
        super().__init__()
        alpha = snake.alpha.detach()
        if snake.alpha_logscale:
            alpha = alpha.exp()
        self.register_buffer("alpha", alpha[None, :, None].clone())  # (1, C, 1)
        self.register_buffer("inv_alpha", 1.0 / (self.alpha + snake.no_div_by_zero))
        self.fused = fused

    def forward(self, x: Tensor) -> Tensor:
        kernel = snake_kernel() if self.fused and x.device.type == "cpu" else None
        if kernel is not None and x.dtype == self.alpha.dtype == torch.float32 and x.dim() == 3:
            n, channels, frames = x.shape
            if x.is_contiguous():  # (N, C, T): a row per channel
                rows, cols, per_column = n * channels, frames, 0
            elif x.transpose(1, 2).is_contiguous():  # time-major (N, T, C) storage: a row per sample
                rows, cols, per_column = n * frames, channels, 1
            else:
                rows = 0
            if rows:
                y = torch.empty_like(x)  # keeps x's layout
                kernel(x.data_ptr(), y.data_ptr(), self.alpha.data_ptr(), self.inv_alpha.data_ptr(),
                       rows, cols, channels, per_column)
                return y
        s = torch.mul(x, self.alpha)
        s.sin_().square_()
        return torch.addcmul(x, s, self.inv_alpha)


def snake_kernel() -> Any:
    """snake.c's `snake_f32` (built once per process, `tts.native`), or None where it cannot be built."""
    lib = native.library("snake.c", "HiFT's Snake activation")
    if lib is None:
        return None
    fn = lib.snake_f32  # the same object on every lookup (ctypes keeps it on the library)
    if fn.argtypes is None:
        fn.restype = None
        fn.argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_long] * 3 + [ctypes.c_int]
    return fn


class _ChannelsLastConv(torch.nn.Module):
    """A Conv1d (or ConvTranspose1d) run as a (1 x k) 2-D convolution on time-major activations.

    oneDNN converts a channel-major (N, C, T) input to its blocked layout and back on every call;
    at HiFT's 64 and 128 channels, with ~13,000 samples a mel chunk of 108 frames, that costs as
    much as the convolution (64 channels, k 11: 35-47 GFLOP/s against 89 time-major, one AVX2
    core). Here the weight is kept channels-last and the activations stay time-major from one
    convolution to the next: `forward` takes and returns (N, C, T) views with strides (C*T, 1, C),
    which the elementwise ops between (Snake, leaky ReLU, residual adds) keep, so only a
    channel-major input (HiFT's first convolution of a stage, an upsampling's output) is copied.
    The output equals the Conv1d's up to summation order (~3e-6 relative on a chunk). With `dtype`
    bf16 the weights are bf16 and the convolution takes and gives fp32 (cast in the same layout),
    as `_Bf16Conv` does channel-major (HiFT 1.16x over that on an avx512_bf16 core).
    """

    weight: Tensor

    def __init__(self, conv: torch.nn.Conv1d | torch.nn.ConvTranspose1d, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.transposed = isinstance(conv, torch.nn.ConvTranspose1d)
        self.stride = (1, conv.stride[0])
        self.padding = (0, int(conv.padding[0]))  # zero padding given in samples (`prepare_hift` checks)
        self.dilation = (1, conv.dilation[0])
        self.output_padding = (0, conv.output_padding[0])
        self.groups = conv.groups
        self.dtype = dtype
        weight = conv.weight.detach()[:, :, None, :].to(dtype)  # (out, in, 1, k); transposed: (in, out, 1, k)
        self.register_buffer("weight", weight.contiguous(memory_format=torch.channels_last))
        self.bias = None if conv.bias is None else torch.nn.Parameter(conv.bias.detach().to(dtype),
                                                                      requires_grad=False)

    def channel_major(self) -> torch.nn.Module:
        """The equivalent upstream module (channel-major; `bench parts` times the two side by side),
        behind `_Bf16Conv` when bf16."""
        weight = self.weight[:, :, 0, :].contiguous()
        if self.transposed:
            conv: torch.nn.Conv1d | torch.nn.ConvTranspose1d = torch.nn.ConvTranspose1d(
                weight.shape[0], weight.shape[1] * self.groups, weight.shape[2], self.stride[1], self.padding[1],
                self.output_padding[1], self.groups, self.bias is not None, self.dilation[1])
        else:
            conv = torch.nn.Conv1d(weight.shape[1] * self.groups, weight.shape[0], weight.shape[2], self.stride[1],
                                   self.padding[1], self.dilation[1], self.groups, self.bias is not None)
        conv.weight = torch.nn.Parameter(weight, requires_grad=False)
        conv.bias = self.bias
        conv = conv.to(weight.device)
        return conv if self.dtype == torch.float32 else _Bf16Conv(conv)

    def forward(self, x: Tensor) -> Tensor:
        x4 = x.unsqueeze(2).contiguous(memory_format=torch.channels_last)  # no copy when time-major
        x4 = x4.to(self.dtype)  # keeps the layout
        if self.transposed:
            y = F.conv_transpose2d(x4, self.weight, self.bias, self.stride, self.padding,
                                   self.output_padding, self.groups, self.dilation)
        else:
            y = F.conv2d(x4, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)
        return y.squeeze(2).float()


# Convolutions with at most this many input and output channels run time-major on a CPU
# (`_ChannelsLastConv`): HiFT's last two stages (128, 64) and the source branch. Its 256- and
# 512-channel convolutions are as fast or faster channel-major (256, k 7: 75 against 50 GFLOP/s).
CHANNELS_LAST_MAX_CHANNELS = 128


def prepare_hift(hift: torch.nn.Module, dtype: torch.dtype) -> None:
    """Ready upstream's HiFT for serving, in place.

    Weight norm is folded into plain weights (upstream recomputes every normalised weight on every
    call, ~7% of HiFT's time; the output is identical), and each Snake activation computes in
    fewer passes (`_Snake`; on a CPU in one, `tts/snake.c`). With bf16, the convolutions, 70% of
    HiFT's time on a CPU, run with bf16 weights (~25% faster at ~0.4-0.75% relative error on a
    chunk). On a CPU the convolutions of its narrow stages run time-major (`_ChannelsLastConv`:
    HiFT 1.2x on one AVX2 core in fp32, the same output up to summation order; 1.16x in bf16 on an
    avx512_bf16 core).
    """
    from chatterbox.models.s3gen.hifigan import Snake
    from torch.nn.utils import parametrize

    for module in hift.modules():
        if parametrize.is_parametrized(module):
            for name in list(module.parametrizations.keys()):  # type: ignore[union-attr, operator]
                parametrize.remove_parametrizations(module, name)

    on_cpu = next(hift.parameters()).device.type == "cpu"
    fused = on_cpu and snake_kernel() is not None

    def swap(parent: torch.nn.Module) -> None:
        for name, child in parent.named_children():
            if isinstance(child, Snake):
                setattr(parent, name, _Snake(child, fused))
            elif isinstance(child, torch.nn.Conv1d | torch.nn.ConvTranspose1d):
                if (on_cpu and max(child.in_channels, child.out_channels) <= CHANNELS_LAST_MAX_CHANNELS
                        and child.padding_mode == "zeros" and not isinstance(child.padding, str)):
                    setattr(parent, name, _ChannelsLastConv(child, dtype))
                elif dtype == torch.bfloat16:
                    setattr(parent, name, _Bf16Conv(child))
            else:
                swap(child)

    swap(hift)


def window_frames(prompt: VoicePrompt, context_tokens: int, max_chunk_tokens: int,
                  first_prompt_tokens: int | None = None, *, lean: bool = False) -> list[int]:
    """Every flow length a request can run with this prompt: prompt + 1..context+chunk+lookahead tokens,
    and a first chunk's behind the shorter first prompt (`StreamingVocoder`'s first_prompt_tokens);
    with `lean`, also lean chunks' (that shorter prompt, with context)."""
    def lengths(p: VoicePrompt, tokens: int) -> range:
        first = p.mels.shape[1] + MEL_PER_TOKEN
        return range(first, first + MEL_PER_TOKEN * tokens, MEL_PER_TOKEN)

    short = prompt.tail(first_prompt_tokens)
    every = set(lengths(prompt, context_tokens + max_chunk_tokens + LOOKAHEAD))
    if short is not prompt:
        every.update(lengths(short, (context_tokens if lean else 0) + max_chunk_tokens + LOOKAHEAD))
    return sorted(every)


class TokenEncoder(torch.nn.Module):
    """Upstream flow's token path: tokens (1, N) and their count -> (1, 2N, 80) (embedding, conformer
    encoder with 2x upsampling, projection; per frame, so cutting frames after it is exact)."""

    def __init__(self, flow: Any) -> None:
        super().__init__()
        self.flow = flow  # upstream's CausalMaskedDiffWithXvec (untyped, so Any at this boundary)

    def forward(self, tokens: Tensor, lengths: Tensor) -> Tensor:
        h, _ = self.flow.encoder(self.flow.input_embedding(tokens), lengths)  # (1, 2N, 512)
        out: Tensor = self.flow.encoder_proj(h)
        return out


class StreamingVocoder:
    """One request's vocoder state. Call `process` with all tokens so far; it returns new PCM."""

    def __init__(self, s3gen: Any, prompt: VoicePrompt, *, max_tokens: int, flow: FlowSpec, flow_steps: int,
                 context_tokens: int, crossfade_ms: float, generator: torch.Generator | None,
                 flow_cfg_rate: float, estimator: FlowEstimator | None = None,
                 first_prompt_tokens: int | None = None,
                 encoder: Callable[[Tensor, Tensor], Tensor] | None = None) -> None:
        # `s3gen`: upstream's chatterbox S3Gen module (untyped, so Any at this boundary).
        # `flow`: the family's flow decoder (time schedule, tail silence); `flow_steps` and
        # `flow_cfg_rate` as configured (a meanflow decoder has no CFG: its rate must be 0).
        # `estimator`: the engine's shared (maybe compiled) one; eager over s3gen's weights if None.
        # `encoder`: the engine's token encoder (`TokenEncoder`, or tts.onnx_flow's); torch if None.
        # `first_prompt_tokens`: the first (non-final) chunk runs behind only the prompt's last this
        # many tokens (None: all of it). Its flow window is mostly prompt (a 6-token chunk behind a
        # 50-token prompt: 100 of 118 frames) and first audio waits for it; later chunks, which
        # overlap it by `context_tokens` and crossfade with it, see the whole prompt again, but
        # for lean ones (`process(lean=True)`: the engine's while the player's queue is thin).
        self.flow = s3gen.flow
        self.estimator = estimator or FlowEstimator(s3gen.flow.decoder.estimator, compile=False)
        self.encode = encoder or TokenEncoder(s3gen.flow)
        self.hift = s3gen.mel2wav
        self.trim_fade: npt.NDArray[np.float32] = s3gen.trim_fade.cpu().numpy()
        self.prompt = prompt
        self.first_prompt = prompt.tail(first_prompt_tokens)
        self.flow_cfg_rate = flow_cfg_rate
        self.context_tokens = context_tokens
        self.crossfade = int(SAMPLE_RATE * crossfade_ms / 1000)
        device = prompt.tokens.device
        # Fixed noise for the whole request: prompt frames, then one column per output mel frame.
        prompt_frames = prompt.mels.shape[1]
        self.tail = [S3GEN_SILENCE] * flow.tail_silence  # appended to the last window
        out_frames = (max_tokens + LOOKAHEAD + len(self.tail)) * MEL_PER_TOKEN
        self.noise = torch.randn(1, 80, prompt_frames + out_frames, generator=generator,
                                 device=generator.device if generator is not None else device).to(device)
        with torch.inference_mode():  # like every tensor process() makes: compiled graphs guard on it
            self.t_span = torch.linspace(0, 1, flow_steps + 1, device=device)
            if flow.schedule == "cosine":
                self.t_span = 1 - torch.cos(self.t_span * 0.5 * math.pi)
        with torch.inference_mode():
            self.spks = self.flow.spk_embed_affine_layer(F.normalize(prompt.xvector, dim=1))  # (1, 80)
        self.emitted_tokens = 0
        self.mel_tail: Tensor | None = None  # (1, 80, <= HIFT_CONTEXT_MELS + HIFT_BUCKET_MELS - 1)
        self.source_tail: Tensor | None = None  # (1, 1, mel_tail frames * 480)
        # tail withheld for the next crossfade
        self.held: npt.NDArray[np.float32] = np.zeros(0, dtype=np.float32)
        self.first = True
        # HiFT's NSF source draws phases and noise from the global RNG; seed it per chunk from the
        # request's generator so a seeded request is reproducible (and other threads' RNG untouched).
        self.hift_seed = int(torch.randint(2**31 - 1, (1,), generator=generator, device=generator.device
                                           if generator is not None else "cpu"))
        self.chunks = 0
        self.flow_s = 0.0  # time split, for benchmarks
        self.hift_s = 0.0

    def ready(self, n_tokens: int, chunk: int) -> bool:
        """Whether `chunk` new tokens (plus lookahead) are available beyond what was emitted."""
        return n_tokens - self.emitted_tokens >= chunk + LOOKAHEAD

    @torch.inference_mode()
    def process(self, tokens: list[int], *, chunk: int | None = None, final: bool = False,
                lean: bool = False, after_flow: Callable[[], None] | None = None) -> npt.NDArray[np.float32]:
        """Vocode the next `chunk` tokens (all remaining when final) -> float32 PCM to play now.

        `lean`: the chunk (the final one too) runs behind the first chunk's shorter prompt (fewer flow
        frames: a small chunk behind 50 prompt and 25 context tokens is mostly prompt); the engine
        asks for it while little audio is queued. `after_flow` runs between the chunk's flow and its
        HiFT (the engine hands back cores there).
        """
        import time

        if final and self.tail:
            tokens = tokens + self.tail  # as upstream Turbo: a little silence after the last token
        end = len(tokens) if final else min(len(tokens) - LOOKAHEAD, self.emitted_tokens + (chunk or 0))
        if end <= self.emitted_tokens:
            return self._flush() if final else np.zeros(0, dtype=np.float32)
        start = max(0, self.emitted_tokens - self.context_tokens)
        window_end = len(tokens) if final else end + LOOKAHEAD
        window = torch.tensor([tokens[start:window_end]], dtype=torch.long, device=self.noise.device)
        t0 = time.perf_counter()
        mel = self._token2mel(window, start, short_prompt=(self.first and not final) or lean,
                              finalize=final)  # (1, 80, 2*(end-start))
        new_mel = mel[:, :, (self.emitted_tokens - start) * MEL_PER_TOKEN :]
        if after_flow is not None:
            after_flow()
        t1 = time.perf_counter()
        pcm = self._mel2pcm(new_mel, final)
        self.hift_s += time.perf_counter() - t1
        self.flow_s += t1 - t0
        self.emitted_tokens = end
        return pcm

    def _token2mel(self, window: Tensor, start: int, short_prompt: bool, finalize: bool) -> Tensor:
        prompt = self.first_prompt if short_prompt else self.prompt
        tokens = torch.cat([prompt.tokens, window], dim=1)  # (1, P + W)
        lengths = torch.tensor([tokens.shape[1]], device=tokens.device)
        h = self.encode(tokens, lengths)  # (1, 2(P + W), 80)
        if not finalize:
            h = h[:, : -LOOKAHEAD * MEL_PER_TOKEN]  # (1, T, 80)
        n_prompt = prompt.mels.shape[1]
        n_total = h.shape[1]
        cond = torch.zeros(1, n_total, 80, device=h.device, dtype=h.dtype)
        cond[:, :n_prompt] = prompt.mels
        # The noise buffer is laid out for the whole prompt: a shorter one takes the columns of its
        # own (last) frames, and every output frame its fixed column whatever prompt precedes it.
        full = self.prompt.mels.shape[1]
        first = full + start * MEL_PER_TOKEN
        z = torch.cat([self.noise[:, :, full - n_prompt : full],
                       self.noise[:, :, first : first + n_total - n_prompt]], dim=2)
        mask = torch.ones(1, 1, n_total, device=h.device, dtype=h.dtype)
        mel = self._solve_euler(z, h.transpose(1, 2).contiguous(), mask, cond.transpose(1, 2).contiguous())
        return mel[:, :, n_prompt:]

    def _solve_euler(self, x: Tensor, mu: Tensor, mask: Tensor, cond: Tensor) -> Tensor:
        """Upstream's CFM Euler solver (x (1, 80, T) noise -> mel), with the CFG rate as a knob.

        The guided estimate is (1 + rate) * conditional - rate * unconditional, the unconditional
        row seeing zero mu, speaker and prompt; rate 0 skips that row and halves the cost. The
        frames are padded once to the estimator's length bucket (if any) and cut back at the end.
        """
        frames = x.shape[-1]
        x, mask, mu, cond = self.estimator.pad(x, mask, mu, cond)
        rate = self.flow_cfg_rate
        rows = 2 if rate > 0 else 1
        x_in = x.expand(rows, -1, -1).contiguous()
        mu_in = torch.cat([mu, torch.zeros_like(mu)])[:rows]
        spks_in = torch.cat([self.spks, torch.zeros_like(self.spks)])[:rows]
        cond_in = torch.cat([cond, torch.zeros_like(cond)])[:rows]
        mask_in = mask.expand(rows, -1, -1)
        for t, r in zip(self.t_span[:-1], self.t_span[1:], strict=True):
            # (rows, 80, T); r, the step's end, only matters to a meanflow estimator
            dxdt = self.estimator(x_in, mask_in, mu_in, t.expand(rows), spks_in, cond_in, r.expand(rows))
            if rows == 2:
                dxdt = (1.0 + rate) * dxdt[:1] - rate * dxdt[1:]
            x_in = (x_in[:1] + (r - t) * dxdt).expand(rows, -1, -1).contiguous()
        return x_in[:1, :, :frames]

    def _mel2pcm(self, new_mel: Tensor, final: bool) -> npt.NDArray[np.float32]:
        new = new_mel.shape[2]
        ctx = 0 if self.mel_tail is None else hift_context(new, self.mel_tail.shape[2])
        if ctx and self.mel_tail is not None and self.source_tail is not None:
            mel_in = torch.cat([self.mel_tail[:, :, -ctx:], new_mel], dim=2)
            cache = self.source_tail[:, :, -ctx * SAMPLES_PER_MEL:]
        else:
            mel_in, cache = new_mel, torch.zeros(1, 1, 0, device=new_mel.device)
        devices = [mel_in.device] if mel_in.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices, device_type=mel_in.device.type):
            torch.manual_seed(self.hift_seed + self.chunks)
            wav, source = self.hift.inference(speech_feat=mel_in, cache_source=cache)  # (1, S), (1, 1, S)
        self.chunks += 1
        self.mel_tail = mel_in[:, :, -(HIFT_CONTEXT_MELS + HIFT_BUCKET_MELS - 1):]
        self.source_tail = source[:, :, -self.mel_tail.shape[2] * SAMPLES_PER_MEL :]
        audio: npt.NDArray[np.float32] = wav[0].float().cpu().numpy()
        boundary = ctx * SAMPLES_PER_MEL  # first sample of the new frames
        fade = min(len(self.held), boundary)
        if fade:
            # Equal-gain crossfade of the held tail with this chunk's rendering of the same samples.
            ramp = np.linspace(0.0, 1.0, fade, dtype=np.float32)
            overlap = audio[boundary - fade : boundary]
            self.held[-fade:] = self.held[-fade:] * (1 - ramp) + overlap * ramp
        out: npt.NDArray[np.float32] = np.concatenate([self.held, audio[boundary:]])
        if self.first:
            n = min(len(out), len(self.trim_fade))
            out[:n] *= self.trim_fade[:n]  # upstream's fade-in against spill-over from the prompt
            self.first = False
        if final:
            self.held = np.zeros(0, dtype=np.float32)
            return out
        keep = min(self.crossfade, len(out))
        self.held = out[len(out) - keep :].copy()
        return out[: len(out) - keep]

    def _flush(self) -> npt.NDArray[np.float32]:
        out, self.held = self.held, np.zeros(0, dtype=np.float32)
        return out


@torch.inference_mode()
def vocode_all(s3gen: Any, prompt: VoicePrompt, tokens: list[int], *, flow: FlowSpec, flow_steps: int | None = None,
               generator: torch.Generator | None, flow_cfg_rate: float | None = None,
               max_tokens: int | None = None) -> npt.NDArray[np.float32]:
    """One-shot vocoding of a whole token sequence: the reference streaming is measured against.

    With the same generator seed and `max_tokens` as a streamed request, it draws the same noise.
    Steps and CFG rate default to the family's own.
    """
    vocoder = StreamingVocoder(s3gen, prompt, max_tokens=max_tokens or len(tokens), flow=flow,
                               flow_steps=flow_steps or flow.steps, context_tokens=len(tokens), crossfade_ms=0,
                               generator=generator,
                               flow_cfg_rate=flow.cfg_rate if flow_cfg_rate is None else flow_cfg_rate)
    return vocoder.process(tokens, final=True)
