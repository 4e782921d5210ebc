"""S3Gen's flow-matching estimator with bucketed lengths, compilable in one graph.

The estimator (upstream's `ConditionalDecoder`: a causal 1-D U-Net with transformer blocks) is
where the vocoder spends its time: it runs flow_steps times per chunk, on the voice prompt plus
the window. Its forward is re-stated here over upstream's modules, without the data-dependent
`.item()` check and einops packing that break `torch.compile`'s graph. When compiled, every call
is padded on the right to a multiple of `BUCKET_FRAMES`: the convolutions are causal, the norms
are per frame and attention masks padded frames out, so the real frames come out exactly as
unpadded. Few distinct lengths mean few graphs (CUDA graphs on GPU), all warmed before serving.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

BUCKET_FRAMES = 32  # mel frames (0.64 s); padding costs at most 31 frames of a few hundred


def bucket(frames: int) -> int:
    return -(-frames // BUCKET_FRAMES) * BUCKET_FRAMES


def pad_to_bucket(*tensors: Tensor) -> tuple[Tensor, ...]:
    """Right-pad (..., T) tensors with zeros to T's bucket (a zero mask marks the padding)."""
    extra = bucket(tensors[0].shape[-1]) - tensors[0].shape[-1]
    return tuple(F.pad(v, (0, extra)) if extra else v for v in tensors)


class FlowEstimator:
    """Call as upstream's estimator: (x, mask, mu, t, spks, cond) -> velocity, all (B, 80, T)."""

    def __init__(self, estimator: Any, *, compile: bool, bucketed: bool | None = None,
                 dtype: torch.dtype | None = None, runtime: str = "torch") -> None:
        # `estimator`: upstream's chatterbox ConditionalDecoder (untyped, so Any at this boundary).
        # `runtime`: "torch", or "onnxruntime" (fp32, exported from this U-Net: tts.onnx_flow).
        if estimator.static_chunk_size != 0:
            raise ValueError("FlowEstimator supports the full-context S3Gen estimator only")
        for _, _, down in estimator.down_blocks:
            if down.__class__.__name__ == "Downsample1D":  # a strided level would need per-level masks
                raise ValueError("FlowEstimator supports the single-level (unstrided) S3Gen estimator only")
        # `dtype`: the weights' and activations' dtype (bf16: real bf16 weights, not autocast; the
        # module is cast in place); None = the module's own (a second wrapper of a module the
        # engine already cast runs as it does). Callers pass and get float32; the solver stays fp32.
        self.dtype: torch.dtype = dtype or next(estimator.parameters()).dtype
        if self.dtype != next(estimator.parameters()).dtype:
            estimator.to(self.dtype)
        self.estimator = estimator
        # Turbo's distilled estimator also takes the step's end time r, mixed into the time embedding.
        self.meanflow: bool = bool(getattr(estimator, "meanflow", False))
        self.compiled = compile
        # Buckets exist for compiled graphs, and for bf16 weights: oneDNN builds its bf16 kernels per
        # shape (a first call at a new length is several times slower), so few lengths, all warmed.
        # Eager fp32 runs skip the padding (up to 31 wasted frames).
        self.bucketed = (compile or self.dtype != torch.float32) if bucketed is None else bucketed
        self._forward: Callable[..., Tensor] = self._unet
        if compile:
            # One graph for every bucket on CPU (the length is symbolic); on CUDA, reduce-overhead
            # records one CUDA graph per bucket on top of it.
            device = next(estimator.parameters()).device
            mode = "reduce-overhead" if device.type == "cuda" else "default"
            self._forward = torch.compile(self._unet, mode=mode, fullgraph=True, dynamic=True)
        self.runtime = runtime
        if runtime == "onnxruntime":
            if compile or self.dtype != torch.float32:
                raise ValueError("the onnxruntime flow estimator runs fp32 weights, uncompiled")
            from tts import onnx_flow

            self.bucketed = bucketed or False  # no per-shape kernels to warm: any length runs as fast
            self.onnx: Any = onnx_flow.estimator(_Unet(self._unet, estimator))
            self._forward = self.onnx
        elif runtime != "torch":
            raise ValueError(f"unknown flow estimator runtime {runtime!r}")
        self.lengths_seen: set[int] = set()  # padded lengths run so far
        self.warmed: set[int] = set()  # padded lengths run by warm_up

    def __call__(self, x: Tensor, mask: Tensor, mu: Tensor, t: Tensor, spks: Tensor, cond: Tensor,
                 r: Tensor | None = None) -> Tensor:
        """Any T; a caller that loops (the ODE solver) pads once with `pad` instead. `r` (B,): the
        step's end time, for a meanflow estimator (ignored otherwise)."""
        frames = x.shape[-1]
        # Contiguous inputs: compiled graphs are guarded on strides, and callers pass expanded views.
        if self.bucketed:
            x, mask, mu, cond = pad_to_bucket(x, mask, mu, cond)
        x, mask, mu, cond = (v.contiguous() for v in (x, mask, mu, cond))
        t, spks = t.contiguous(), spks.contiguous()
        r = t if r is None else r.contiguous()
        self.lengths_seen.add(x.shape[-1])
        if self.dtype != torch.float32:
            # t and r stay fp32: their sinusoidal embedding (t x 1000) needs the mantissa.
            x, mask, mu, spks, cond = (v.to(self.dtype) for v in (x, mask, mu, spks, cond))
        return self._forward(x, mask, mu, t, spks, cond, r)[:, :, :frames].float()

    def pad(self, *tensors: Tensor) -> tuple[Tensor, ...]:
        """`pad_to_bucket` when bucketed, else the tensors as they are."""
        return pad_to_bucket(*tensors) if self.bucketed else tensors

    @torch.inference_mode()
    def warm_up(self, frame_counts: Iterable[int], rows: int, device: torch.device,
                progress: Callable[[int, int], None] | None = None) -> int:
        """Run every bucket that `frame_counts` fall into, `rows` CFG rows each; returns how many."""
        buckets = sorted({bucket(n) for n in frame_counts})
        self.warmed.update(buckets)
        for n, frames in enumerate(buckets, start=1):
            # Distinct tensors, as the solver passes: graphs are guarded on inputs aliasing each other.
            x, mu, cond = (torch.zeros(rows, 80, frames, device=device) for _ in range(3))
            self(x, torch.ones(rows, 1, frames, device=device), mu, torch.zeros(rows, device=device),
                 torch.zeros(rows, 80, device=device), cond, torch.ones(rows, device=device))
            if progress is not None:
                progress(n, len(buckets))
        return len(buckets)

    def _unet(self, x: Tensor, mask: Tensor, mu: Tensor, t: Tensor, spks: Tensor, cond: Tensor,
              r: Tensor) -> Tensor:
        """Upstream's ConditionalDecoder.forward for its single-level configuration.

        x, mu, cond: (B, 80, T); mask: (B, 1, T); t, r: (B,); spks: (B, 80). Every level runs at T
        frames (the one "downsample" is an unstrided causal conv), so one mask serves all of them.
        """
        est = self.estimator
        emb = est.time_mlp(est.time_embeddings(t).to(x.dtype))  # (B, 1024)
        if self.meanflow:
            end = est.time_mlp(est.time_embeddings(r).to(x.dtype))
            emb = est.time_embed_mixer(torch.cat([emb, end], dim=1))
        frames = x.shape[-1]
        h = torch.cat([x, mu, spks.unsqueeze(-1).expand(-1, -1, frames), cond], dim=1)  # (B, 320, T)
        bias = (1.0 - mask) * -1.0e10  # (B, 1, T): padded frames are never attended to

        def attend(h: Tensor, blocks: Any) -> Tensor:
            h = h.transpose(1, 2)  # (B, T, C)
            for block in blocks:
                h = block(hidden_states=h, attention_mask=bias, timestep=emb)
            return h.transpose(1, 2)

        skips = []
        for resnet, blocks, down in est.down_blocks:
            h = attend(resnet(h, mask, emb), blocks)
            skips.append(h)
            h = down(h * mask)
        for resnet, blocks in est.mid_blocks:
            h = attend(resnet(h, mask, emb), blocks)
        for resnet, blocks, up in est.up_blocks:
            skip = skips.pop()
            h = torch.cat([h[:, :, : skip.shape[-1]], skip], dim=1)
            h = up(attend(resnet(h, mask, emb), blocks) * mask)
        h = est.final_block(h, mask)
        out: Tensor = est.final_proj(h * mask) * mask
        return out


class _Unet(torch.nn.Module):
    """`FlowEstimator._unet` as a module over upstream's estimator (what an ONNX export traces)."""

    def __init__(self, unet: Callable[..., Tensor], estimator: torch.nn.Module) -> None:
        super().__init__()
        self.estimator = estimator  # registered: the export takes its weights along
        self.unet = unet

    def forward(self, *inputs: Tensor) -> Tensor:
        return self.unet(*inputs)
