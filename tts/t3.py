"""T3 decoding owned by the engine: static KV cache, SDPA, and the whole sampling step on device.

Upstream chatterbox decodes through Hugging Face's generic Llama with a growing cache, eager
attention and host-side logits processors with a host sync per step. Here the same weights (the
upstream module, loaded with upstream's parameter names) run through a small hand-written Llama
forward over a preallocated cache for both classifier-free-guidance rows, and one function does a
whole step: embed the previous token, run 30 layers, mix CFG, penalise repeats, apply temperature,
min-p and top-p, and sample without leaving the device. That function is what `torch.compile`
sees; KV lengths are bucketed so a handful of static shapes cover every request.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

log = logging.getLogger(__name__)

# KV lengths are rounded up to KV_BUCKET x a power of two (capped at the cache size): attention never
# reads more than twice the filled cache, and a 1.6k-slot cache needs only 5 step graphs.
KV_BUCKET = 128


class CancelFlag(Protocol):
    """Anything with threading.Event's is_set()."""

    def is_set(self) -> bool: ...


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.8
    cfg_weight: float = 0.5
    repetition_penalty: float = 1.2
    min_p: float = 0.05
    top_p: float = 1.0
    greedy: bool = False


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


class _Block(nn.Module):
    """One Llama layer with fused projections: QKV in one matmul, gate+up in another.

    Fewer, larger matmuls cut per-op overhead (and, with int8 weights, the per-call activation
    quantisation) without changing the arithmetic: outputs are the same rows of the same products.
    """

    def __init__(self, layer: Any) -> None:
        # `layer`: one of upstream's (Hugging Face) LlamaDecoderLayer modules, untyped here.
        super().__init__()
        attn, mlp = layer.self_attn, layer.mlp
        self.qkv = _concat_linears(attn.q_proj, attn.k_proj, attn.v_proj)
        self.o = _copy_linear(attn.o_proj)
        self.gate_up = _concat_linears(mlp.gate_proj, mlp.up_proj)
        self.down = _copy_linear(mlp.down_proj)
        self.register_buffer("ln1", layer.input_layernorm.weight.detach().clone())
        self.register_buffer("ln2", layer.post_attention_layernorm.weight.detach().clone())


def _concat_linears(*parts: nn.Linear) -> nn.Linear:
    weight = torch.cat([p.weight.detach() for p in parts], dim=0)  # (sum out, in)
    fused = nn.Linear(weight.shape[1], weight.shape[0], bias=False, device=weight.device, dtype=weight.dtype)
    fused.weight.data.copy_(weight)
    return fused


def _copy_linear(part: nn.Linear) -> nn.Linear:
    return _concat_linears(part)


class T3Decoder:
    """Decodes speech tokens from upstream T3 weights with a static cache of `max_len` positions."""

    def __init__(self, t3: Any, *, dtype: torch.dtype, max_len: int, int8: bool = False,
                 compile: bool = False) -> None:
        # `t3`: upstream's chatterbox T3 module (untyped, so Any at this boundary).
        self.t3 = t3
        self.hp = t3.hp
        self.device: torch.device = t3.speech_head.weight.device
        self.dtype = dtype
        cfg = t3.cfg
        self.n_layers: int = cfg.num_hidden_layers
        self.n_heads: int = cfg.num_attention_heads
        self.n_kv_heads: int = cfg.num_key_value_heads
        self.head_dim: int = cfg.head_dim
        self.eps: float = cfg.rms_norm_eps
        self.max_len = int(math.ceil(max_len / KV_BUCKET) * KV_BUCKET)
        with torch.no_grad():
            self.blocks = nn.ModuleList(_Block(layer) for layer in t3.tfmr.layers)
        if int8:
            from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

            # int8 weights (one scale per output channel: per-tensor scales lose the small rows),
            # activations quantised per call; attention, norms and sampling stay fp32.
            quantize_dynamic(self.blocks, {nn.Linear: per_channel_dynamic_qconfig}, inplace=True)
        self.final_norm: Tensor = t3.tfmr.norm.weight
        self.q_size = self.n_heads * self.head_dim
        self.kv_size = self.n_kv_heads * self.head_dim
        self._lock = threading.Lock()

        # RoPE table for every cache position, from upstream's own rotary module (llama3 scaling).
        positions = torch.arange(self.max_len, device=self.device)[None]
        probe = torch.zeros(1, dtype=torch.float32, device=self.device)
        cos, sin = t3.tfmr.rotary_emb(probe, positions)
        self.cos = cos[0].to(dtype)  # (max_len, head_dim)
        self.sin = sin[0].to(dtype)

        # Static KV cache for the two CFG rows: (layers, 2, kv_heads, max_len, head_dim).
        shape = (self.n_layers, 2, self.n_kv_heads, self.max_len, self.head_dim)
        self.k_cache = torch.zeros(shape, dtype=dtype, device=self.device)
        self.v_cache = torch.zeros(shape, dtype=dtype, device=self.device)
        # Tokens seen so far (repetition penalty), as a mask over the speech vocabulary.
        self.seen = torch.zeros(self.hp.speech_tokens_dict_size, dtype=torch.bool, device=self.device)
        self.compiled = compile
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

    def release_upstream_layers(self) -> None:
        """Drop upstream's unfused layer weights (the decoder has its own copies); frees half the memory.

        Only for an engine that never runs upstream's forward again (conditioning does not use it).
        """
        self.t3.tfmr.layers = nn.ModuleList()

    # -- the transformer -------------------------------------------------------------------------

    def _forward(self, x: Tensor, start: Tensor, kv_len: int, prefill: bool, rows: slice | None = None) -> Tensor:
        """Run the backbone on x (B, S, dim) at positions start..start+S-1, attending over the cache's
        first kv_len slots; returns normed hidden states. `rows`: the cache rows x is for (B of the
        two CFG rows); None = both."""
        bsz, seq, _ = x.shape
        idx = start + torch.arange(seq, device=x.device)  # (S,)
        cos = self.cos.index_select(0, idx)[None, None]  # (1, 1, S, head_dim)
        sin = self.sin.index_select(0, idx)[None, None]
        # A prefill from position 0 needs nothing but its own k, v under a causal mask.
        own_only = prefill and kv_len == seq
        if not own_only:
            # Decode (bucketed) or a prefill after a cached prefix: attend over kv_len slots,
            # each query up to its own position.
            mask = (torch.arange(kv_len, device=x.device) <= idx[:, None])[None, None]  # (1,1,S,kv_len)
        for i, block in enumerate(self.blocks):
            k_cache = self.k_cache[i] if rows is None else self.k_cache[i, rows]  # (B, H, max_len, D)
            v_cache = self.v_cache[i] if rows is None else self.v_cache[i, rows]
            h = _rms_norm(x, block.ln1, self.eps)
            q, k, v = block.qkv(h).split([self.q_size, self.kv_size, self.kv_size], dim=-1)
            q = q.view(bsz, seq, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, S, D)
            k = k.view(bsz, seq, self.n_kv_heads, self.head_dim).transpose(1, 2)
            v = v.view(bsz, seq, self.n_kv_heads, self.head_dim).transpose(1, 2)
            q = q * cos + _rotate_half(q) * sin
            k = k * cos + _rotate_half(k) * sin
            k_cache.index_copy_(2, idx, k)
            v_cache.index_copy_(2, idx, v)
            if own_only:
                o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            else:
                keys = k_cache[:, :, :kv_len]  # (B, H, kv_len, D)
                values = v_cache[:, :, :kv_len]
                o = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)
            x = x + block.o(o.transpose(1, 2).reshape(bsz, seq, -1))
            h = _rms_norm(x, block.ln2, self.eps)
            gate, up = block.gate_up(h).chunk(2, dim=-1)
            x = x + block.down(F.silu(gate) * up)
        return _rms_norm(x, self.final_norm, self.eps)

    def _logits(self, hidden: Tensor) -> Tensor:
        logits: Tensor = self.t3.speech_head(hidden).float()  # (2, V)
        return logits

    # -- sampling, all on device ------------------------------------------------------------------

    def _sample(self, logits: Tensor, params: SamplingParams, noise: Tensor) -> Tensor:
        """logits (2, V) for the CFG rows -> next token id (1,); updates the repetition mask."""
        cond, uncond = logits[0], logits[1]
        scores = cond + params.cfg_weight * (cond - uncond)  # (V,)
        penalty = params.repetition_penalty
        if penalty != 1.0:
            penalised = torch.where(scores < 0, scores * penalty, scores / penalty)
            scores = torch.where(self.seen, penalised, scores)
        if params.greedy:
            token = scores.argmax().view(1)
        else:
            scores = scores / params.temperature
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
            probs = scores.softmax(-1)
            # Exponential-race sampling: argmax(p / Exp(1)) draws from p without a host sync.
            token = (probs / noise).argmax().view(1)
        self.seen.index_fill_(0, token, True)
        return token

    def _decode_step(self, token: Tensor, pos: Tensor, speech_pos: Tensor, kv_len: int,
                     params: SamplingParams, noise: Tensor) -> Tensor:
        """token (1,) at cache position `pos` and speech position `speech_pos` -> next token (1,)."""
        emb = self.t3.speech_emb(token) + self.t3.speech_pos_emb.emb(speech_pos.view(1))  # (1, dim)
        x = emb.to(self.dtype).expand(2, -1)[:, None, :]  # (2, 1, dim): both CFG rows see the token
        hidden = self._forward(x, pos, kv_len, prefill=False)
        return self._sample(self._logits(hidden[:, -1]), params, noise)

    # -- public API --------------------------------------------------------------------------------

    def prefix_embeds(self, cond_emb: Tensor, text_tokens: Tensor) -> Tensor:
        """[cond | text | BOS | BOS] for both CFG rows, exactly as upstream's inference builds it.

        cond_emb (1, C, dim); text_tokens (1, T) with start/stop text tokens -> (2, C + T + 2, dim).
        Upstream feeds BOS twice (once as the initial speech token, once as the loop's first input);
        the weights were used that way, so the prefix keeps it.
        """
        t3 = self.t3
        text = text_tokens.expand(2, -1)
        text_emb = t3.text_emb(text).clone()  # (2, T, dim)
        text_emb[1].zero_()  # unconditional row: no text
        text_emb = text_emb + t3.text_pos_emb(text)
        bos = torch.full((1, 1), self.hp.start_speech_token, dtype=torch.long, device=self.device)
        bos_emb = t3.speech_emb(bos) + t3.speech_pos_emb.get_fixed_embedding(0)  # (1, 1, dim)
        bos_emb = bos_emb.expand(2, -1, -1).to(self.dtype)
        return torch.cat([self.cond_embeds(cond_emb), text_emb.to(self.dtype), bos_emb, bos_emb], dim=1)

    def cond_embeds(self, cond_emb: Tensor) -> Tensor:
        """A voice's conditioning (1, C, dim) as the first C prefix positions of both CFG rows (2, C, dim)."""
        return cond_emb.to(self.t3.text_emb.weight.dtype).expand(2, -1, -1).to(self.dtype)

    @torch.inference_mode()
    def cache_prefix(self, cond_emb: Tensor, text_positions: int = 0) -> PrefixKV:
        """Run a voice's conditioning once, followed by `text_positions` positions of the
        unconditional row's (empty) text; `prefill(..., cached=)` then skips what they cover."""
        cond = self.cond_embeds(cond_emb)[1:]  # (1, C, dim)
        # No more than the cache and the text position table hold.
        text_len = min(text_positions, self.max_len - cond.shape[1] - 2, self.t3.text_pos_emb.emb.num_embeddings)
        no_text = self.t3.text_pos_emb(torch.zeros(1, text_len, dtype=torch.long, device=self.device))
        embeds = torch.cat([cond, no_text.to(self.dtype)[None]], dim=1)  # as prefix_embeds' row 1
        length = embeds.shape[1]
        with self._lock:
            zero = torch.zeros((), dtype=torch.long, device=self.device)
            self._forward(embeds, zero, length, prefill=True, rows=slice(1, 2))
            return PrefixKV(self.k_cache[:, 1, :, :length].clone(), self.v_cache[:, 1, :, :length].clone(),
                            cond_len=cond.shape[1])

    def prefill(self, prefix: Tensor, cached: PrefixKV | None = None) -> Tensor:
        """Fill the cache with the prefix (2, P, dim) from `prefix_embeds`; returns the logits (2, V)
        for the first token.

        With `cached` (from `cache_prefix` for the prefix's voice) the conditional row is computed
        from its text on, the unconditional row from its first position that `cached` lacks (its
        BOS pair when the text fits).
        """
        length = prefix.shape[1]
        if length >= self.max_len:
            raise ValueError(f"prefix of {length} positions does not fit the {self.max_len}-slot cache")
        if cached is None:
            start = torch.zeros((), dtype=torch.long, device=self.device)
            return self._logits(self._forward(prefix, start, length, prefill=True)[:, -1])
        text = length - cached.cond_len - 2  # [cond | text | BOS | BOS]
        hidden = []
        for row, done in ((0, cached.cond_len), (1, cached.cond_len + min(text, cached.text_len))):
            self.k_cache[:, row, :, :done] = cached.keys[:, :, :done]
            self.v_cache[:, row, :, :done] = cached.values[:, :, :done]
            start = torch.tensor(done, dtype=torch.long, device=self.device)
            out = self._forward(prefix[row:row + 1, done:], start, length, prefill=True, rows=slice(row, row + 1))
            hidden.append(out[:, -1])
        return self._logits(torch.cat(hidden))

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
    ) -> Generator[list[int], None, None]:
        """Decode up to `max_tokens` speech tokens after `prefix`; yields them in small host-side blocks.

        The stop token is looked for on the host every `check_every` steps (one sync per block, not
        per step), the first time after `first_block` steps if given (what the caller needs for its
        first chunk); tokens after it are discarded. `cached`: the K/V of the prefix's leading
        conditioning positions (see `prefill`). Stops early when `cancel` is set. The decoder
        is single-tenant: concurrent calls wait for each other.
        """
        with self._lock:
            yield from self._generate(prefix, max_tokens, params, generator, cancel,
                                      check_every, first_block or check_every, cached)

    def _generate(self, prefix: Tensor, max_tokens: int, params: SamplingParams,
                  generator: torch.Generator | None, cancel: CancelFlag | None,
                  check_every: int, first_block: int, cached: PrefixKV | None) -> Iterator[list[int]]:
        prefix_len = prefix.shape[1]
        max_tokens = min(max_tokens, self.max_len - prefix_len - 1)
        if max_tokens <= 0:
            return
        self.seen.zero_()
        self.seen[self.hp.start_speech_token] = True  # upstream's generated_ids starts with BOS
        vocab = self.hp.speech_tokens_dict_size
        logits = self.prefill(prefix, cached)
        token = self._sample(logits, params, self._noise(vocab, generator))
        stop = self.hp.stop_speech_token
        block: list[Tensor] = [token]
        block_size = first_block
        for i in range(1, max_tokens + 1):
            if len(block) == block_size or i == max_tokens:
                block_size = check_every
                ids = torch.cat(block).tolist()  # the one host sync per block
                block.clear()
                if stop in ids:
                    ids = ids[: ids.index(stop)]
                    if ids:
                        yield ids
                    return
                yield ids
                if i == max_tokens or (cancel is not None and cancel.is_set()):
                    return
            pos = prefix_len + i - 1  # cache slot of the token being fed
            token = self._step(
                token,
                torch.tensor(pos, device=self.device),
                torch.tensor(i, device=self.device),  # upstream: token i gets speech position i
                self.kv_bucket(pos + 1),
                params,
                self._noise(vocab, generator),
            )
            block.append(token)

    @torch.inference_mode()
    def score(self, prefix: Tensor, tokens: list[int], cfg_weight: float) -> Tensor:
        """Teacher-forced CFG-mixed logits (len(tokens), V): what each step predicts given the true past.

        Row i is the distribution for token i; for measuring numerical drift (dtype, int8) without
        sampled sequences diverging after the first disagreement.
        """
        with self._lock:
            logits = self.prefill(prefix)
            rows = [logits]
            prefix_len = prefix.shape[1]
            for i, token in enumerate(tokens[:-1], start=1):
                ids = torch.tensor([token], device=self.device)
                emb = self.t3.speech_emb(ids) + self.t3.speech_pos_emb.emb(torch.tensor([i], device=self.device))
                x = emb.to(self.dtype).expand(2, -1)[:, None, :]
                pos = prefix_len + i - 1
                hidden = self._forward(x, torch.tensor(pos, device=self.device), self.kv_bucket(pos + 1), False)
                rows.append(self._logits(hidden[:, -1]))
            stacked = torch.stack(rows)  # (N, 2, V)
            mixed: Tensor = stacked[:, 0] + cfg_weight * (stacked[:, 0] - stacked[:, 1])
            return mixed

    def _noise(self, vocab: int, generator: torch.Generator | None) -> Tensor:
        return torch.empty(vocab, device=self.device).exponential_(1, generator=generator)

    @torch.inference_mode()
    def warm_up(self, prefix_len: int, max_tokens: int, params: SamplingParams) -> int:
        """Run every step shape a request of this size uses (all KV buckets); returns how many."""
        buckets = self.buckets_for(prefix_len, max_tokens)
        token = torch.zeros(1, dtype=torch.long, device=self.device)
        noise = self._noise(self.hp.speech_tokens_dict_size, None)
        for kv_len in buckets:
            pos = torch.tensor(kv_len - 1, device=self.device)
            self._step(token, pos, torch.tensor(1, device=self.device), kv_len, params, noise)
        return len(buckets)


def cast_for_decoding(t3: Any, dtype: torch.dtype) -> None:
    """Cast the backbone and heads to `dtype`; conditioning stays fp32 (it runs once per voice)."""
    # `t3`: upstream's chatterbox T3 module (untyped).
    t3.tfmr.to(dtype)
    t3.speech_head.to(dtype)
    t3.speech_emb.to(dtype)
    t3.speech_pos_emb.to(dtype)
    t3.text_emb.to(dtype)
    t3.text_pos_emb.to(dtype)
