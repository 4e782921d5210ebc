"""T3 decoding owned by the engine: static KV cache, SDPA, and the whole sampling step on device.

Upstream chatterbox decodes through Hugging Face's generic Llama or GPT-2 with a growing cache,
eager attention and host-side logits processors with a host sync per step. Here the same weights
(the upstream module, loaded with upstream's parameter names) run through a small hand-written
forward (`Backbone`: the original's Llama, Turbo's GPT-2) over a preallocated cache for the
decoding rows (two with classifier-free guidance, one without), and one function does a whole
step: embed the previous token, run the layers, mix CFG, penalise repeats, apply temperature,
top-k, min-p and top-p in the family's order, and sample without leaving the device. That
function is what `torch.compile` sees; KV lengths are bucketed so a handful of static shapes cover every request.
"""

from __future__ import annotations

import abc
import copy
import logging
import math
import threading
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tts.attention import CpuKernel, cpu_kernel, one_query_attention
from tts.families import Family, Sampling

if TYPE_CHECKING:
    from tts.quantized import Graph, QuantizedLayers

log = logging.getLogger(__name__)

# KV lengths are rounded up to KV_BUCKET x a power of two (capped at the cache size): attention never
# reads more than twice the filled cache, and a 1.6k-slot cache needs only 5 step graphs.
KV_BUCKET = 128

_FP16_MAX = torch.finfo(torch.float16).max


class CancelFlag(Protocol):
    """Anything with threading.Event's is_set()."""

    def is_set(self) -> bool: ...


@dataclass(frozen=True)
class SamplingParams:
    """One request's sampling, in the family's upstream processor order (see tts.families.Sampling)."""

    temperature: float = 0.8
    cfg_weight: float = 0.5
    repetition_penalty: float = 1.2
    min_p: float = 0.05
    top_p: float = 1.0
    top_k: int = 0
    penalty_last: bool = False
    bos_in_history: bool = True
    greedy: bool = False

    @classmethod
    def of(cls, sampling: Sampling, **overrides: Any) -> SamplingParams:
        """A family's defaults, with config overrides (None = keep the default)."""
        fields = {k: getattr(sampling, k) for k in ("temperature", "cfg_weight", "repetition_penalty", "min_p",
                                                   "top_p", "top_k", "penalty_last", "bos_in_history")}
        fields.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**fields)


class Block(list[int]):
    """A block of decoded speech token ids; `last` when the decoder ends with it (stop token, token
    budget or cancel): a consumer can finish its work without waiting for the end of the stream."""

    def __init__(self, ids: list[int], last: bool = False) -> None:
        super().__init__(ids)
        self.last = last


@dataclass(frozen=True)
class PrefixKV:
    """Keys and values every request of a voice starts with, each (layers, kv_heads, P, head_dim).

    Positions :cond_len are the voice's conditioning, the same in both CFG rows. The positions after
    them are the unconditional row's text positions: that row has no text (position embeddings
    only), so causal attention makes its K/V depend on the voice and on the position alone, and a
    request of T text positions copies the first T. A request's prefill then computes only its text
    in the conditional row and the BOS pair in the unconditional one: about half the work.
    """

    keys: Tensor
    values: Tensor
    cond_len: int

    @property
    def text_len(self) -> int:
        """How many unconditional text positions are cached (the longest text they cover)."""
        return int(self.keys.shape[2]) - self.cond_len


def _rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    # Same arithmetic as LlamaRMSNorm: normalise in fp32, scale in the weight dtype.
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * xf.to(x.dtype)


def _rotate_half(x: Tensor) -> Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _concat_linears(*parts: nn.Linear) -> nn.Linear:
    weight = torch.cat([p.weight.detach() for p in parts], dim=0)  # (sum out, in)
    fused = nn.Linear(weight.shape[1], weight.shape[0], bias=False, device=weight.device, dtype=weight.dtype)
    fused.weight.data.copy_(weight)
    return fused


def _linear_from_conv1d(conv: Any) -> nn.Linear:
    """Hugging Face's GPT-2 Conv1D (y = x @ W + b, W (in, out)) as an nn.Linear (W (out, in))."""
    weight = conv.weight.detach().t()
    linear = nn.Linear(weight.shape[1], weight.shape[0], bias=True, device=weight.device, dtype=weight.dtype)
    linear.weight.data.copy_(weight)
    linear.bias.data.copy_(conv.bias.detach())
    return linear


class _Layer(Protocol):
    def project(self, x: Tensor) -> Tensor: ...

    def finish(self, x: Tensor, attended: Tensor) -> Tensor: ...

    def onnx_project(self, g: Graph, x: str) -> str: ...

    def onnx_finish(self, g: Graph, x: str, attended: str) -> str: ...


class _LlamaLayer(nn.Module):
    """One Llama layer with fused projections: QKV in one matmul, gate+up in another.

    Fewer, larger matmuls cut per-op overhead (and, with int8 weights, the per-call activation
    quantisation) without changing the arithmetic: outputs are the same rows of the same products.
    """

    ln1: Tensor
    ln2: Tensor

    def __init__(self, layer: Any, eps: float) -> None:
        # `layer`: one of upstream's (Hugging Face) LlamaDecoderLayer modules, untyped here.
        super().__init__()
        attn, mlp = layer.self_attn, layer.mlp
        self.eps = eps
        self.qkv = _concat_linears(attn.q_proj, attn.k_proj, attn.v_proj)
        self.o = _concat_linears(attn.o_proj)
        self.gate_up = _concat_linears(mlp.gate_proj, mlp.up_proj)
        self.down = _concat_linears(mlp.down_proj)
        self.register_buffer("ln1", layer.input_layernorm.weight.detach().clone())
        self.register_buffer("ln2", layer.post_attention_layernorm.weight.detach().clone())

    def project(self, x: Tensor) -> Tensor:
        """x (B, S, dim) -> fused q|k|v (B, S, q + 2 kv)."""
        out: Tensor = self.qkv(_rms_norm(x, self.ln1, self.eps))
        return out

    def finish(self, x: Tensor, attended: Tensor) -> Tensor:
        """Residual after attention (B, S, q), then the SwiGLU MLP."""
        x = x + self.o(attended)
        gate, up = self.gate_up(_rms_norm(x, self.ln2, self.eps)).chunk(2, dim=-1)
        out: Tensor = x + self.down(F.silu(gate) * up)
        return out

    def onnx_project(self, g: Graph, x: str) -> str:
        """`project` as ONNX nodes (tts.quantized): RMSNorm in fp32, then the fused QKV product."""
        return g.linear(g.rms_norm(x, self.ln1, self.eps), self.qkv)

    def onnx_finish(self, g: Graph, x: str, attended: str) -> str:
        """`finish` as ONNX nodes: output projection + residual, SwiGLU over gate|up + residual."""
        x = g.op("Add", x, g.linear(attended, self.o))
        gate, up = g.halves(g.linear(g.rms_norm(x, self.ln2, self.eps), self.gate_up))
        return g.op("Add", x, g.linear(g.op("Mul", g.op("Mul", gate, g.op("Sigmoid", gate)), up), self.down))


class _GPT2Layer(nn.Module):
    """One GPT-2 block (pre-LayerNorm, fused c_attn, tanh-GELU MLP) over upstream's weights."""

    def __init__(self, block: Any, eps: float) -> None:
        # `block`: one of upstream's (Hugging Face) GPT2Block modules, untyped here.
        super().__init__()
        self.eps = eps
        self.qkv = _linear_from_conv1d(block.attn.c_attn)
        self.o = _linear_from_conv1d(block.attn.c_proj)
        self.fc = _linear_from_conv1d(block.mlp.c_fc)
        self.proj = _linear_from_conv1d(block.mlp.c_proj)
        self.ln1 = _copy_norm(block.ln_1)
        self.ln2 = _copy_norm(block.ln_2)

    def project(self, x: Tensor) -> Tensor:
        out: Tensor = self.qkv(self.ln1(x))
        return out

    def finish(self, x: Tensor, attended: Tensor) -> Tensor:
        x = x + self.o(attended)
        out: Tensor = x + self.proj(F.gelu(self.fc(self.ln2(x)), approximate="tanh"))  # gelu_new
        return out

    def onnx_project(self, g: Graph, x: str) -> str:
        return g.linear(g.layer_norm(x, self.ln1), self.qkv)

    def onnx_finish(self, g: Graph, x: str, attended: str) -> str:
        x = g.op("Add", x, g.linear(attended, self.o))
        hidden = g.op("Gelu", g.linear(g.layer_norm(x, self.ln2), self.fc), approximate="tanh")
        return g.op("Add", x, g.linear(hidden, self.proj))


def _copy_norm(norm: nn.LayerNorm) -> nn.LayerNorm:
    copy = nn.LayerNorm(list(norm.normalized_shape), eps=norm.eps, device=norm.weight.device, dtype=norm.weight.dtype)
    copy.load_state_dict(norm.state_dict())
    return copy


class Backbone(nn.Module, abc.ABC):
    """T3's transformer as the decoder runs it: layers with fused projections over upstream's weights.

    Subclasses state what differs between the family's backbones (normalisation, where positions
    enter, the MLP); the decoder's loop, cache and attention are the same for all.
    """

    layers: nn.ModuleList
    n_heads: int
    n_kv_heads: int
    head_dim: int

    def typed_layers(self) -> list[_Layer]:
        # A string type: dynamo cannot trace `list[_Layer]` (a types.GenericAlias) under fullgraph.
        return cast("list[_Layer]", list(self.layers))

    def inputs(self, x: Tensor, idx: Tensor) -> Tensor:
        """Input embeddings (B, S, dim) at cache positions idx (S,), before the first layer."""
        return x

    def rotate(self, q: Tensor, k: Tensor, idx: Tensor) -> tuple[Tensor, Tensor]:
        """Rotary positions on q, k (B, H, S, D), if the backbone has them."""
        return q, k

    @abc.abstractmethod
    def final(self, x: Tensor) -> Tensor:
        """The final normalisation of the hidden states (B, S, dim)."""

    @staticmethod
    def of(t3: Any, dtype: torch.dtype, max_len: int) -> Backbone:
        """The backbone of upstream's T3 module (`t3.is_gpt` says which transformer it built)."""
        return GPT2Backbone(t3.tfmr, t3.cfg) if t3.is_gpt else LlamaBackbone(t3.tfmr, t3.cfg, dtype, max_len)


class LlamaBackbone(Backbone):
    norm: Tensor
    cos: Tensor
    sin: Tensor

    def __init__(self, tfmr: Any, cfg: Any, dtype: torch.dtype, max_len: int) -> None:
        super().__init__()
        self.eps: float = cfg.rms_norm_eps
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        with torch.no_grad():
            self.layers = nn.ModuleList(_LlamaLayer(layer, self.eps) for layer in tfmr.layers)
        self.register_buffer("norm", tfmr.norm.weight.detach().clone())
        # RoPE table for every cache position, from upstream's own rotary module (llama3 scaling).
        device = tfmr.norm.weight.device
        positions = torch.arange(max_len, device=device)[None]
        cos, sin = tfmr.rotary_emb(torch.zeros(1, dtype=torch.float32, device=device), positions)
        self.register_buffer("cos", cos[0].to(dtype))  # (max_len, head_dim)
        self.register_buffer("sin", sin[0].to(dtype))

    def rotate(self, q: Tensor, k: Tensor, idx: Tensor) -> tuple[Tensor, Tensor]:
        cos = self.cos.index_select(0, idx)[None, None]  # (1, 1, S, head_dim)
        sin = self.sin.index_select(0, idx)[None, None]
        return q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin

    def final(self, x: Tensor) -> Tensor:
        return _rms_norm(x, self.norm, self.eps)


class GPT2Backbone(Backbone):
    wpe: Tensor

    def __init__(self, tfmr: Any, cfg: Any) -> None:
        super().__init__()
        self.n_heads = self.n_kv_heads = cfg.n_head
        self.head_dim = cfg.n_embd // cfg.n_head
        eps: float = cfg.layer_norm_epsilon
        with torch.no_grad():
            self.layers = nn.ModuleList(_GPT2Layer(block, eps) for block in tfmr.h)
            self.ln_f = _copy_norm(tfmr.ln_f)
        self.register_buffer("wpe", tfmr.wpe.weight.detach().clone())  # (n_positions, dim)

    def inputs(self, x: Tensor, idx: Tensor) -> Tensor:
        # GPT2Model adds its learned positions to inputs_embeds at positions past_len + arange(S).
        return x + self.wpe.index_select(0, idx).to(x.dtype)

    def final(self, x: Tensor) -> Tensor:
        out: Tensor = self.ln_f(x)
        return out


def cond_positions(hp: Any) -> int:
    """Conditioning positions of a voice with a full-length prompt: speaker (1) + speech prompt
    (perceiver-resampled: 32, else the whole prompt) + emotion (1, where the family has it)."""
    prompt = 32 if hp.use_perceiver_resampler else hp.speech_cond_prompt_len
    return 1 + prompt + (1 if hp.emotion_adv else 0)


def prefix_length(family: Family, hp: Any, text_positions: int) -> int:
    """[cond | text | BOS x bos_repeats]: positions for `text_positions` text positions (from text_ids)."""
    return cond_positions(hp) + text_positions + family.bos_repeats


def quantize_layers(layers: nn.ModuleList, quant: str, head: nn.Linear) -> QuantizedLayers:
    """The backbone's layers as ONNX Runtime segments with blocked int8 or int4 weights (`tts.quantized`),
    for a CPU, and the speech head with int8 blocks; the decoder runs them instead of the layers' own
    linears, whose weights are dropped. Attention, the KV cache and sampling stay in torch, in fp32."""
    from tts.quantized import QuantizedLayers

    quantized = QuantizedLayers(list(layers), quant, head)
    for layer in layers:  # their weights live in the segments now
        for name, child in list(layer.named_children()):
            if isinstance(child, nn.Linear):
                setattr(layer, name, _Dropped(child.in_features, child.out_features))
    return quantized


class _Dropped(nn.Module):
    """A linear whose weights moved into tts.quantized's segments: keeps its shape, refuses to run."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features

    def forward(self, x: Tensor) -> Tensor:
        raise RuntimeError("this layer's weights are quantised into ONNX segments (tts.quantized)")


class T3Decoder:
    """Decodes speech tokens from upstream T3 weights with a static cache of `max_len` positions.

    `family` (tts.families.Family) says how its prefix is laid out and whether it decodes two
    classifier-free-guidance rows (conditional, empty text) or one.
    """

    def __init__(self, t3: Any, family: Family, *, dtype: torch.dtype, max_len: int, quant: str | None = None,
                 compile: bool = False) -> None:
        # `t3`: upstream's chatterbox T3 module (untyped, so Any at this boundary).
        self.t3 = t3
        self.family = family
        self.hp = t3.hp
        self.device: torch.device = t3.speech_head.weight.device
        self.dtype = dtype
        self.rows = 2 if family.cfg else 1
        self.vocab: int = self.hp.speech_tokens_dict_size
        self.max_len = int(math.ceil(max_len / KV_BUCKET) * KV_BUCKET)
        self.backbone = Backbone.of(t3, dtype, self.max_len)
        self.n_layers = len(self.backbone.layers)
        self.quantized = (quantize_layers(self.backbone.layers, quant, t3.speech_head) if quant is not None
                          else None)
        bb = self.backbone
        self.q_size = bb.n_heads * bb.head_dim
        self.kv_size = bb.n_kv_heads * bb.head_dim
        self._lock = threading.Lock()
        self.last_prefill_s = 0.0
        # Learned text/speech position tables (the original's; GPT-2 positions live in the backbone).
        self.learned_positions = self.hp.input_pos_emb == "learned"

        # Eager fp32 steps on a CPU attend through the C kernel (tts.attention); compiled graphs
        # and other dtypes through torch.
        self.compiled = compile
        self.cpu_attention: CpuKernel | None = (
            cpu_kernel() if self.device.type == "cpu" and dtype == torch.float32 and not compile else None)
        # Where the weights are quantised, K/V are kept in fp16 if the kernel reads it: half the bytes
        # of the step's second-largest read (Turbo's 375 conditioning positions), at a relative error
        # of about 3e-4 in the attention output, far below the weights' own.
        self.kv_dtype = (torch.float16 if quant is not None and self.cpu_attention is not None
                         and torch.float16 in self.cpu_attention.kv_dtypes else dtype)
        # Static KV cache for the decoding rows: (layers, rows, kv_heads, max_len, head_dim).
        shape = (self.n_layers, self.rows, bb.n_kv_heads, self.max_len, bb.head_dim)
        self.k_cache = torch.zeros(shape, dtype=self.kv_dtype, device=self.device)
        self.v_cache = torch.zeros(shape, dtype=self.kv_dtype, device=self.device)
        # A decode step's q and cache slices keep one layout: checked here once, not per layer and step.
        if self.cpu_attention is not None and not self.cpu_attention.fits(
                torch.zeros(self.rows, bb.n_heads, 1, bb.head_dim), self.k_cache[0, :, :, :1],
                self.v_cache[0, :, :, :1]):
            log.warning("decode attention runs in torch: the C kernel cannot read this cache's layout")
            self.cpu_attention = None
        # Tokens seen so far (repetition penalty), as a mask over the speech vocabulary.
        self.seen = torch.zeros(self.vocab, dtype=torch.bool, device=self.device)
        self._step: Callable[..., Tensor] = self._decode_step
        if compile:
            # One graph per KV bucket (kv_len is a Python int, hence a static shape); dynamic=False
            # keeps every other shape fixed. On CUDA, reduce-overhead captures CUDA graphs.
            import torch._functorch.config as functorch_config

            # Cache the traced graphs too (not only Inductor's kernels), so a restart skips most of
            # the compile (torch 2.6 keeps this off by default).
            functorch_config.enable_autograd_cache = True
            mode = "reduce-overhead" if self.device.type == "cuda" else "default"
            self._step = torch.compile(self._decode_step, mode=mode, fullgraph=True, dynamic=False)

    def torch_attention_twin(self) -> T3Decoder:
        """A decoder over the same weights (shared, not copied) whose steps attend in torch over a
        cache in the serving dtype: the path before the C kernel, which `bench t3` measures beside it.
        For eager decoders (a compiled one has no kernel to compare)."""
        twin = copy.copy(self)
        twin.cpu_attention, twin.kv_dtype = None, self.dtype
        twin.k_cache = torch.zeros_like(self.k_cache, dtype=self.dtype)
        twin.v_cache = torch.zeros_like(self.v_cache, dtype=self.dtype)
        twin.seen = torch.zeros_like(self.seen)
        twin._lock = threading.Lock()
        twin._step = twin._decode_step  # its own caches: not the original's bound method
        return twin

    def release_upstream_layers(self) -> None:
        """Drop upstream's transformer (the decoder has its own copies; frees half the memory) and
        its text head (for training: 0.19 GB in Turbo, whose vocabulary is GPT-2's).

        Only for an engine that never runs upstream's forward again (conditioning does not use it).
        """
        self.t3.text_head = None
        if self.t3.is_gpt:
            self.t3.tfmr.h = nn.ModuleList()
            if hasattr(self.t3.tfmr, "wte"):
                del self.t3.tfmr.wte  # GPT-2's own token table: T3 embeds its inputs itself
        else:
            self.t3.tfmr.layers = nn.ModuleList()

    # -- the transformer -------------------------------------------------------------------------

    def _forward(self, x: Tensor, start: Tensor, kv_len: int, prefill: bool, rows: slice | None = None,
                 exact: bool = False) -> Tensor:
        """Run the backbone on x (B, S, dim) at positions start..start+S-1, attending over the cache's
        first kv_len slots; returns normed hidden states. `rows`: the cache rows x is for (B of the
        decoding rows); None = all. `exact`: kv_len ends at x's last position (one decoded token
        attending over exactly the filled cache: nothing to mask)."""
        bb = self.backbone
        bsz, seq, _ = x.shape
        idx = start + torch.arange(seq, device=x.device)  # (S,)
        x = bb.inputs(x, idx)
        # A prefill from position 0 needs nothing but its own k, v under a causal mask.
        own_only = prefill and kv_len == seq
        mask: Tensor | None = None
        if not own_only and not exact:
            # Decode (bucketed) or a prefill after a cached prefix: attend over kv_len slots,
            # each query up to its own position.
            mask = (torch.arange(kv_len, device=x.device) <= idx[:, None])[None, None]  # (1,1,S,kv_len)
        quantized, kernel = self.quantized, self.cpu_attention
        fp16_kv = self.kv_dtype == torch.float16 and self.dtype != torch.float16
        # Fused q|k|v of the next layer: ONNX segments compute it with the previous layer's rest.
        qkv = quantized.entry(x) if quantized is not None else None
        for i, layer in enumerate(bb.typed_layers()):
            k_cache = self.k_cache[i] if rows is None else self.k_cache[i, rows]  # (B, H, max_len, D)
            v_cache = self.v_cache[i] if rows is None else self.v_cache[i, rows]
            if qkv is None:
                qkv = layer.project(x)
            if fp16_kv:
                # fp16 tops out at 65504: a larger K/V entry stays finite rather than poisoning the
                # softmax (one op on k|v; qkv is this step's own tensor).
                qkv[..., self.q_size:].clamp_(-_FP16_MAX, _FP16_MAX)
            q, k, v = torch.split(qkv, [self.q_size, self.kv_size, self.kv_size], dim=-1)
            q = q.view(bsz, seq, bb.n_heads, bb.head_dim).transpose(1, 2)  # (B, H, S, D)
            k = k.view(bsz, seq, bb.n_kv_heads, bb.head_dim).transpose(1, 2)
            v = v.view(bsz, seq, bb.n_kv_heads, bb.head_dim).transpose(1, 2)
            q, k = bb.rotate(q, k, idx)
            k_cache.index_copy_(2, idx, k.to(self.kv_dtype))
            v_cache.index_copy_(2, idx, v.to(self.kv_dtype))
            if own_only:
                o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            else:
                keys = k_cache[:, :, :kv_len]  # (B, H, kv_len, D)
                values = v_cache[:, :, :kv_len]
                if seq == 1 and mask is None and kernel is not None:  # layout checked at init
                    o = kernel(q, keys, values)
                else:
                    attend = one_query_attention if seq == 1 else F.scaled_dot_product_attention
                    keys, values = keys.to(q.dtype), values.to(q.dtype)  # no-ops unless K/V are fp16
                    o = attend(q, keys, values, attn_mask=mask)  # mask None: all visible
            attended = o.transpose(1, 2).reshape(bsz, seq, -1)
            if quantized is not None:
                x, qkv = quantized.after_attention(i, x, attended)
            else:
                x, qkv = layer.finish(x, attended), None
        return bb.final(x)

    def _logits(self, hidden: Tensor) -> Tensor:
        if self.quantized is not None:
            return self.quantized.logits(hidden)  # (rows, V)
        logits: Tensor = self.t3.speech_head(hidden).float()  # (rows, V)
        return logits

    # -- sampling, all on device ------------------------------------------------------------------

    def _mix(self, logits: Tensor, cfg_weight: float) -> Tensor:
        """logits (rows, V) -> the scores sampling starts from (V,): CFG-mixed when there are two rows."""
        if self.rows == 1:
            return logits[0]
        cond, uncond = logits[0], logits[1]
        return cond + cfg_weight * (cond - uncond)

    def _penalise(self, scores: Tensor, penalty: float) -> Tensor:
        # Hugging Face's RepetitionPenaltyLogitsProcessor over the tokens seen so far.
        penalised = torch.where(scores < 0, scores * penalty, scores / penalty)
        return torch.where(self.seen, penalised, scores)

    def _sample(self, logits: Tensor, params: SamplingParams, noise: Tensor) -> Tensor:
        """logits (rows, V) -> next token id (1,); updates the repetition mask.

        The processors run in the family's upstream order: penalty, temperature, top-k, min-p,
        top-p, or (penalty_last) temperature, top-k, top-p, penalty.
        """
        scores = self._mix(logits, params.cfg_weight)  # (V,)
        penalty = params.repetition_penalty
        if penalty != 1.0 and not params.penalty_last:
            scores = self._penalise(scores, penalty)
        if params.greedy:
            if penalty != 1.0 and params.penalty_last:
                scores = self._penalise(scores, penalty)
            token = scores.argmax().view(1)
        else:
            scores = scores / params.temperature
            if params.top_k > 0:
                kth = torch.topk(scores, min(params.top_k, scores.shape[-1])).values[-1]
                scores = scores.masked_fill(scores < kth, float("-inf"))
            if params.min_p > 0:
                probs = scores.softmax(-1)
                scores = scores.masked_fill(probs < params.min_p * probs.max(), float("-inf"))
            if params.top_p < 1.0:
                sorted_scores, order = scores.sort()
                cumulative = sorted_scores.softmax(-1).cumsum(-1)
                drop_sorted = cumulative <= (1 - params.top_p)
                drop_sorted[-1] = False  # always keep the most likely token
                drop = torch.zeros_like(drop_sorted).scatter(0, order, drop_sorted)
                scores = scores.masked_fill(drop, float("-inf"))
            if penalty != 1.0 and params.penalty_last:
                scores = self._penalise(scores, penalty)
            probs = scores.softmax(-1)
            # Exponential-race sampling: argmax(p / Exp(1)) draws from p without a host sync.
            token = (probs / noise).argmax().view(1)
        self.seen.index_fill_(0, token, True)
        return token

    def step_embeds(self, token: Tensor, speech_pos: Tensor) -> Tensor:
        """Embedding of speech token (1,) at speech position (1,) for every decoding row: (rows, 1, dim)."""
        emb: Tensor = self.t3.speech_emb(token)  # (1, dim)
        if self.learned_positions:
            emb = emb + self.t3.speech_pos_emb.emb(speech_pos.view(1))
        return emb.to(self.dtype).expand(self.rows, -1)[:, None, :]

    def _decode_step(self, token: Tensor, pos: Tensor, speech_pos: Tensor, kv_len: int,
                     params: SamplingParams, noise: Tensor) -> Tensor:
        """token (1,) at cache position `pos` and speech position `speech_pos` -> next token (1,).

        `kv_len` is `kv_span(pos + 1)`: exact in eager mode, a bucket when compiled."""
        hidden = self._forward(self.step_embeds(token, speech_pos), pos, kv_len, prefill=False,
                               exact=not self.compiled)
        return self._sample(self._logits(hidden[:, -1]), params, noise)

    # -- public API --------------------------------------------------------------------------------

    def text_ids(self, ids: list[int]) -> Tensor:
        """The family's text positions for raw tokenizer ids: (1, T), with start/stop text tokens where
        the family has them. The one place the text layout is written."""
        if self.family.text_markers:
            ids = [self.hp.start_text_token, *ids, self.hp.stop_text_token]
        return torch.tensor([ids], dtype=torch.long, device=self.device)

    def prefix_len(self, text_positions: int) -> int:
        """Prefix length for a full-length voice conditioning and `text_positions` text positions."""
        return prefix_length(self.family, self.hp, text_positions)

    @property
    def cond_len(self) -> int:
        return cond_positions(self.hp)

    def prefix_embeds(self, cond_emb: Tensor, text: Tensor) -> Tensor:
        """[cond | text | BOS x bos_repeats] for every decoding row, exactly as upstream's inference builds it.

        cond_emb (1, C, dim); text (1, T) from `text_ids` -> (rows, C + T + bos_repeats, dim). With
        CFG, the second row's text embeddings are zero (position embeddings only). The original
        feeds BOS twice (once as the initial speech token, once as the loop's first input); the
        weights were used that way, so the prefix keeps it.
        """
        t3 = self.t3
        text = text.expand(self.rows, -1)
        text_emb = t3.text_emb(text).clone()  # (rows, T, dim)
        if self.rows == 2:
            text_emb[1].zero_()  # unconditional row: no text
        bos = torch.full((1, 1), self.hp.start_speech_token, dtype=torch.long, device=self.device)
        bos_emb = t3.speech_emb(bos)  # (1, 1, dim)
        if self.learned_positions:
            text_emb = text_emb + t3.text_pos_emb(text)
            bos_emb = bos_emb + t3.speech_pos_emb.get_fixed_embedding(0)
        bos_emb = bos_emb.expand(self.rows, self.family.bos_repeats, -1).to(self.dtype)
        return torch.cat([self.cond_embeds(cond_emb), text_emb.to(self.dtype), bos_emb], dim=1)

    def cond_embeds(self, cond_emb: Tensor) -> Tensor:
        """A voice's conditioning (1, C, dim) as the first C prefix positions of every row (rows, C, dim)."""
        return cond_emb.to(self.t3.text_emb.weight.dtype).expand(self.rows, -1, -1).to(self.dtype)

    @torch.inference_mode()
    def cache_prefix(self, cond_emb: Tensor, text_positions: int = 0) -> PrefixKV:
        """Run a voice's conditioning once, followed (with CFG) by `text_positions` positions of the
        unconditional row's (empty) text; `prefill(..., cached=)` then skips what they cover."""
        cond = self.cond_embeds(cond_emb)[-1:]  # (1, C, dim)
        text_len = 0
        if self.rows == 2:
            # No more than the cache and the text position table hold.
            text_len = min(text_positions, self.max_len - cond.shape[1] - 2,
                           self.t3.text_pos_emb.emb.num_embeddings)
            no_text = self.t3.text_pos_emb(torch.zeros(1, text_len, dtype=torch.long, device=self.device))
            cond = torch.cat([cond, no_text.to(self.dtype)[None]], dim=1)  # as prefix_embeds' row 1
        length = cond.shape[1]
        row = self.rows - 1
        with self._lock:
            zero = torch.zeros((), dtype=torch.long, device=self.device)
            self._forward(cond, zero, length, prefill=True, rows=slice(row, row + 1))
            return PrefixKV(self.k_cache[:, row, :, :length].clone(), self.v_cache[:, row, :, :length].clone(),
                            cond_len=length - text_len)

    def prefill(self, prefix: Tensor, cached: PrefixKV | None = None) -> Tensor:
        """Fill the cache with the prefix (rows, P, dim) from `prefix_embeds`; returns the logits
        (rows, V) for the first token.

        With `cached` (from `cache_prefix` for the prefix's voice) the conditional row is computed
        from its text on, the unconditional row (CFG) from its first position that `cached` lacks
        (its BOS pair when the text fits).
        """
        length = prefix.shape[1]
        if length >= self.max_len:
            raise ValueError(f"prefix of {length} positions does not fit the {self.max_len}-slot cache")
        if cached is None:
            start = torch.zeros((), dtype=torch.long, device=self.device)
            return self._logits(self._forward(prefix, start, length, prefill=True)[:, -1])
        text = length - cached.cond_len - self.family.bos_repeats
        hidden = []
        for row in range(self.rows):
            done = cached.cond_len + (min(text, cached.text_len) if row == 1 else 0)
            self.k_cache[:, row, :, :done] = cached.keys[:, :, :done]
            self.v_cache[:, row, :, :done] = cached.values[:, :, :done]
            start = torch.tensor(done, dtype=torch.long, device=self.device)
            out = self._forward(prefix[row:row + 1, done:], start, length, prefill=True, rows=slice(row, row + 1))
            hidden.append(out[:, -1])
        return self._logits(torch.cat(hidden))

    def kv_span(self, positions: int) -> int:
        """The cache slots a decode step attends over when `positions` are filled: exactly those in
        eager mode (on a CPU the step reads the whole span: Turbo's 375 conditioning positions make
        it 100 MB of fp32 K/V per step, a quarter of the step), the KV bucket when compiled (one
        graph per bucket)."""
        return self.kv_bucket(positions) if self.compiled else positions

    def kv_bucket(self, positions: int) -> int:
        bucket = KV_BUCKET
        while bucket < positions:
            bucket *= 2
        return min(self.max_len, bucket)

    def buckets_for(self, prefix_len: int, max_tokens: int) -> list[int]:
        """Every KV bucket a request with this prefix and token budget passes through."""
        first, last = self.kv_bucket(prefix_len + 1), self.kv_bucket(prefix_len + max_tokens)
        buckets = [first]
        while buckets[-1] < last:
            buckets.append(self.kv_bucket(buckets[-1] + 1))
        return buckets

    @torch.inference_mode()
    def generate(
        self,
        prefix: Tensor,
        max_tokens: int,
        params: SamplingParams,
        *,
        generator: torch.Generator | None = None,
        cancel: CancelFlag | None = None,
        check_every: int = 8,
        first_block: int | None = None,
        cached: PrefixKV | None = None,
    ) -> Generator[Block, None, None]:
        """Decode up to `max_tokens` speech tokens after `prefix`; yields them in small host-side blocks,
        the last one marked (`Block.last`).

        The stop token is looked for on the host every `check_every` steps (one sync per block, not
        per step), the first time after `first_block` steps if given (what the caller needs for its
        first chunk); tokens after it are discarded. `cached`: the K/V of the prefix's leading
        conditioning positions (see `prefill`). Stops early when `cancel` is set. The decoder is
        single-tenant: concurrent calls wait for each other.
        """
        with self._lock:
            yield from self._generate(prefix, max_tokens, params, generator, cancel,
                                      check_every, first_block or check_every, cached)

    def _start(self, prefix: Tensor, params: SamplingParams, generator: torch.Generator | None,
               cached: PrefixKV | None) -> Tensor:
        """Prefill and sample the first token (the history starts as [BOS], as upstream's does)."""
        self.seen.zero_()
        bos = self.hp.start_speech_token
        self.seen[bos] = True
        t0 = time.perf_counter()
        logits = self.prefill(prefix, cached)
        token = self._first_sample(logits, params, generator)
        self.last_prefill_s = time.perf_counter() - t0  # host time: exact on a CPU, enqueue time on CUDA
        return token

    def _first_sample(self, logits: Tensor, params: SamplingParams, generator: torch.Generator | None) -> Tensor:
        token = self._sample(logits, params, self._noise(generator))
        if not params.bos_in_history:
            # Turbo's later steps see only the generated tokens (the first token may itself be BOS).
            self.seen[self.hp.start_speech_token] = False
            self.seen.index_fill_(0, token, True)
        return token

    def _generate(self, prefix: Tensor, max_tokens: int, params: SamplingParams,
                  generator: torch.Generator | None, cancel: CancelFlag | None,
                  check_every: int, first_block: int, cached: PrefixKV | None) -> Iterator[Block]:
        prefix_len = prefix.shape[1]
        max_tokens = min(max_tokens, self.max_len - prefix_len - 1)
        if max_tokens <= 0:
            return
        token = self._start(prefix, params, generator, cached)
        stop = self.hp.stop_speech_token
        block: list[Tensor] = [token]
        block_size = first_block
        for i in range(1, max_tokens + 1):
            if len(block) == block_size or i == max_tokens:
                block_size = check_every
                ids = torch.cat(block).tolist()  # the one host sync per block
                block.clear()
                if stop in ids:
                    yield Block(ids[: ids.index(stop)], last=True)  # maybe empty: the stop came first
                    return
                last = i == max_tokens or (cancel is not None and cancel.is_set())
                yield Block(ids, last=last)
                if last:
                    return
            pos = prefix_len + i - 1  # cache slot of the token being fed
            token = self._step(
                token,
                torch.tensor(pos, device=self.device),
                torch.tensor(i, device=self.device),  # upstream: token i gets speech position i
                self.kv_span(pos + 1),
                params,
                self._noise(generator),
            )
            block.append(token)

    @torch.inference_mode()
    def score(self, prefix: Tensor, tokens: list[int], cfg_weight: float) -> Tensor:
        """Teacher-forced (CFG-mixed) logits (len(tokens), V): what each step predicts given the true past.

        Row i is the distribution for token i; for measuring numerical drift (dtype, int8) without
        sampled sequences diverging after the first disagreement.
        """
        with self._lock:
            rows = [self._mix(self.prefill(prefix), cfg_weight)]
            prefix_len = prefix.shape[1]
            for i, token in enumerate(tokens[:-1], start=1):
                ids = torch.tensor([token], device=self.device)
                x = self.step_embeds(ids, torch.tensor([i], device=self.device))
                pos = prefix_len + i - 1
                hidden = self._forward(x, torch.tensor(pos, device=self.device), pos + 1, False, exact=True)
                rows.append(self._mix(self._logits(hidden[:, -1]), cfg_weight))
            return torch.stack(rows)  # (N, V)

    def _noise(self, generator: torch.Generator | None) -> Tensor:
        return torch.empty(self.vocab, device=self.device).exponential_(1, generator=generator)

    @torch.inference_mode()
    def warm_up_prefill(self, cond_emb: Tensor, text_positions: int, cached: PrefixKV | None = None) -> None:
        """Prefill `text_positions` text positions (the longest a request has) once, at this thread's
        thread count. The first prefill that long at a thread count costs ~0.2 s more than the ones
        after it (ONNX Runtime grows its buffers; shorter ones then fit), which a request's next text,
        decoded ahead on T3's core, would otherwise pay in the middle of speech."""
        text = torch.zeros(1, text_positions, dtype=torch.long, device=self.device)
        with self._lock:
            self.prefill(self.prefix_embeds(cond_emb, text), cached)

    @torch.inference_mode()
    def warm_up(self, prefix_len: int, max_tokens: int, params: SamplingParams,
                progress: Callable[[int, int], None] | None = None) -> int:
        """Run every step shape a request of this size uses (all KV buckets); returns how many."""
        buckets = self.buckets_for(prefix_len, max_tokens)
        token = torch.zeros(1, dtype=torch.long, device=self.device)
        noise = self._noise(None)
        for n, kv_len in enumerate(buckets, start=1):
            pos = torch.tensor(kv_len - 1, device=self.device)
            self._step(token, pos, torch.tensor(1, device=self.device), kv_len, params, noise)
            if progress is not None:
                progress(n, len(buckets))
        return len(buckets)


def cast_for_decoding(t3: Any, dtype: torch.dtype) -> None:
    """Cast the backbone and heads to `dtype`; conditioning stays fp32 (it runs once per voice)."""
    # `t3`: upstream's chatterbox T3 module (untyped).
    t3.tfmr.to(dtype)
    for name in ("speech_head", "speech_emb", "speech_pos_emb", "text_emb", "text_pos_emb"):
        module = getattr(t3, name)
        if module is not None:  # Turbo has no learned position tables
            module.to(dtype)
