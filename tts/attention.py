"""A decoded token's attention: one query per head over the cached keys and values.

Two implementations of the same arithmetic: `one_query_attention` in torch (any device, any dtype,
masks), and `CpuKernel`, a small C kernel (`one_query_attention.c`) that the CPU decoder uses for
eager steps (fp32 queries over fp32 or fp16 keys and values) when the machine has a C compiler
(Debian's gcc is part of `scripts/setup`: PyAudio builds with it), built once per process at load
(`tts.native`); without a compiler the torch path runs and the log says so once.
"""

from __future__ import annotations

import ctypes
from typing import Any

import torch
from torch import Tensor

from tts import native

SOURCE = "one_query_attention.c"


def one_query_attention(q: Tensor, keys: Tensor, values: Tensor, attn_mask: Tensor | None = None) -> Tensor:
    """q (B, H, 1, D) over keys, values (B, H, L, D) -> (B, H, 1, D); attn_mask broadcasts to (B, H, 1, L).

    Two matrix products and a softmax rather than SDPA: ATen's CPU flash kernel splits the keys
    over threads, so its sums change with the thread count, and a pipelined request decodes its
    first block on every core and the rest on T3's share (`tts.engine`); the tokens must not.
    """
    scores = torch.matmul(q, keys.transpose(-1, -2)) * q.shape[-1] ** -0.5  # (B, H, 1, L)
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, float("-inf"))
    return torch.matmul(scores.softmax(-1), values)


# The widest head the fp16 kernel holds in registers (MAX_DIM in one_query_attention.c).
_F16_MAX_DIM = 256


class CpuKernel:
    """`one_query_attention` for CPU tensors, unmasked, in one pass over the keys and values: fp32
    ones, and fp16 ones where the CPU has F16C (`kv_dtypes` says which the build has).

    Call it with slices of a cache laid out (B, H, slots, D): `keys = k_cache[:, :, :L]`. It reads
    each key and value once, single-threaded (a decode step runs on T3's own core), and its sums
    for a head run in one fixed order whatever the thread count.
    """

    def __init__(self, lib: ctypes.CDLL) -> None:
        self._fns: dict[torch.dtype, Any] = {}
        for dtype, name in ((torch.float32, "one_query_attention_f32"), (torch.float16, "one_query_attention_f16")):
            fn = getattr(lib, name, None)  # the fp16 one exists only where the CPU has F16C
            if fn is not None:
                fn.restype = None
                fn.argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_long] * 4 + [ctypes.c_float, ctypes.c_void_p]
                self._fns[dtype] = fn  # ctypes drops the GIL for the call: the vocoder's thread runs on

    @property
    def kv_dtypes(self) -> frozenset[torch.dtype]:
        return frozenset(self._fns)

    def fits(self, q: Tensor, keys: Tensor, values: Tensor) -> bool:
        """Whether these tensors have the layout the kernel reads (else use `one_query_attention`)."""
        b, h, length, d = keys.shape
        cache_like = all(
            t.dtype == keys.dtype and t.device.type == "cpu" and t.stride(3) == 1 and t.stride(2) == d
            and t.stride(0) == h * t.stride(1)
            for t in (keys, values))
        return (cache_like and keys.dtype in self._fns and keys.stride() == values.stride()
                and q.shape == (b, h, 1, d) and q.dtype == torch.float32 and d % 8 == 0 and length > 0
                and (keys.dtype != torch.float16 or d <= _F16_MAX_DIM))

    def __call__(self, q: Tensor, keys: Tensor, values: Tensor) -> Tensor:
        """q (B, H, 1, D) fp32 over keys, values (B, H, L, D) cache slices (see `fits`) -> (B, H, 1, D) fp32."""
        b, h, length, d = keys.shape
        q = q.contiguous()
        out = torch.empty(b, h, 1, d)
        scores = torch.empty(length)
        self._fns[keys.dtype](q.data_ptr(), keys.data_ptr(), values.data_ptr(), out.data_ptr(), b * h, length,
                              keys.stride(1), d, d ** -0.5, scores.data_ptr())
        return out


def cpu_kernel() -> CpuKernel | None:
    """The C kernel (built on first use in this process, `tts.native`); None (logged once) where it
    cannot be built."""
    lib = native.library(SOURCE, "decode attention")
    return CpuKernel(lib) if lib is not None else None
