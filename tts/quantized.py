"""T3's layers with blocked int4 or int8 weights on a CPU, through ONNX Runtime's `MatMulNBits`.

T3's decode step is bound by reading its weights. fbgemm's dynamic int8 linears read them at
about 12 GB/s on an AVX2 core; ONNX Runtime's blocked GEMV (MLAS; activations quantised to int8
per block, `accuracy_level` 4) reads int4 weights in about half fbgemm's time for the same layers,
and int8 ones with a scale per block of 32 inputs move the logits a quarter as far as fbgemm's
per-row scales do (`chatterd bench t3`).

Everything between two attentions runs as one ONNX graph per layer (`Segment`): the output
projection and residual, the MLP with its norm and residual, then the next layer's norm and QKV
projection. A decode step makes n_layers + 1 calls instead of four per layer, and the norms,
activations and residual adds leave torch's per-operator overhead behind. Attention and the
KV cache stay in torch (`tts.t3`).

A decode step's segments run single-threaded on the calling thread: no ONNX Runtime pool beside
torch's OpenMP team (`daemon.engine`), and the same arithmetic on every thread count, so the
pipelined engine's tokens do not depend on how it splits the cores. Attention still uses every
core T3 has; a prefill's segments too (`Segment`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor, nn

from tts.onnx_sessions import Sessions, onnx_modules

BLOCK = 32  # input channels per scale: the finest block MLAS's integer GEMV runs fast on
BITS = {"int4": 4, "int8": 8}
_ACCURACY_LEVEL = 4  # activations quantised to int8 per block: MLAS's integer dot-product path
_OPSET = 20  # Gelu with approximate="tanh"


def _onnx() -> tuple[Any, Any]:
    return onnx_modules("tts.dtype int8 and int4")


class Graph:
    """Builds one ONNX graph: float inputs of shape (rows, width), weights as initializers.

    T3's layer classes state their own arithmetic with it (`onnx_project`, `onnx_finish`).
    """

    def __init__(self, bits: int) -> None:
        self.bits = bits
        self.nodes: list[Any] = []
        self.inits: list[Any] = []
        self.inputs: list[Any] = []
        self.outputs: list[Any] = []
        self._n = 0

    def name(self, stem: str) -> str:
        self._n += 1
        return f"{stem}{self._n}"

    def input(self, name: str, width: int) -> str:
        from onnx import TensorProto, helper

        self.inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, ["rows", width]))
        return name

    def output(self, value: str, name: str, width: int) -> None:
        from onnx import TensorProto, helper

        self.op("Identity", value, out=name)
        self.outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, ["rows", width]))

    def const(self, array: npt.NDArray[Any]) -> str:
        from onnx import numpy_helper

        name = self.name("c")
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def op(self, op_type: str, *inputs: str, out: str | None = None, domain: str = "", **attrs: Any) -> str:
        from onnx import helper

        out = out or self.name(op_type.lower())
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], domain=domain, **attrs))
        return out

    def linear(self, x: str, linear: nn.Linear) -> str:
        """x @ W^T (+ b) with W as blocked int4/int8, one fp32 scale per BLOCK inputs of an output."""
        packed, scales = quantize_weight(linear.weight, self.bits)
        inputs = [x, self.const(packed), self.const(scales)]
        if linear.bias is not None:
            inputs += ["", "", self.const(_f32(linear.bias))]  # zero_points, g_idx: absent (symmetric)
        return self.op("MatMulNBits", *inputs, domain="com.microsoft", K=linear.in_features,
                       N=linear.out_features, bits=self.bits, block_size=BLOCK, accuracy_level=_ACCURACY_LEVEL)

    def layer_norm(self, x: str, norm: nn.LayerNorm) -> str:
        return self.op("LayerNormalization", x, self.const(_f32(norm.weight)), self.const(_f32(norm.bias)),
                       axis=-1, epsilon=float(norm.eps))

    def rms_norm(self, x: str, weight: Tensor, eps: float) -> str:
        # Same arithmetic as LlamaRMSNorm (tts.t3._rms_norm) in fp32: x * rsqrt(mean(x^2) + eps) * w.
        mean = self.op("ReduceMean", self.op("Mul", x, x), self.const(np.array([-1], np.int64)), keepdims=1)
        root = self.op("Sqrt", self.op("Add", mean, self.const(np.array(eps, np.float32))))
        return self.op("Mul", self.op("Div", x, root), self.const(_f32(weight)))

    def halves(self, x: str) -> tuple[str, str]:
        """The two halves of x's last dimension (e.g. gate | up)."""
        first, second = self.name("half"), self.name("half")
        from onnx import helper

        self.nodes.append(helper.make_node("Split", [x], [first, second], axis=-1, num_outputs=2))
        return first, second

    def serialize(self) -> bytes:
        from onnx import helper

        graph = helper.make_graph(self.nodes, "t3_segment", self.inputs, self.outputs, self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", _OPSET),
                                                        helper.make_opsetid("com.microsoft", 1)])
        return bytes(model.SerializeToString())


def _f32(t: Tensor) -> npt.NDArray[Any]:
    return t.detach().float().cpu().numpy().copy()


def quantize_weight(weight: Tensor, bits: int) -> tuple[npt.NDArray[Any], npt.NDArray[Any]]:
    """weight (out, in) -> (packed (out, blocks, BLOCK * bits / 8) uint8, scales (out, blocks) fp32), symmetric."""
    from onnxruntime.capi._pybind_state import quantize_matmul_4bits, quantize_matmul_8bits

    w_kn = np.ascontiguousarray(_f32(weight).T)  # MatMulNBits' B is (K, N)
    k, n = w_kn.shape
    blocks = -(-k // BLOCK)
    if blocks * BLOCK != k:
        w_kn = np.pad(w_kn, ((0, blocks * BLOCK - k), (0, 0)))
    packed = np.zeros((n, blocks, BLOCK * bits // 8), dtype=np.uint8)
    scales = np.zeros((n, blocks), dtype=np.float32)
    zero_points = np.zeros((n, -(-blocks * bits // 8)), dtype=np.uint8)  # unused: symmetric
    (quantize_matmul_4bits if bits == 4 else quantize_matmul_8bits)(packed, w_kn, scales, zero_points, BLOCK, n, k,
                                                                     True)
    return packed, scales


# Rows (tokens x decoding rows) from which a call is a prefill: compute-bound, worth every core.
_PREFILL_ROWS = 4


class Segment:
    """One ONNX graph between two attentions, run on the calling thread (`run(**inputs)`).

    A decode step (one or two rows) runs single-threaded: reading the weights is the cost and a
    second thread bought nothing measurable. A prefill is compute-bound and runs on the calling
    thread's torch thread count (`tts.onnx_sessions`).
    """

    def __init__(self, graph: Graph) -> None:
        self.outputs = [o.name for o in graph.outputs]
        self.weight_bytes = sum(int(np.prod(t.dims)) * (1 if t.data_type == 2 else 4) for t in graph.inits)
        self._sessions = Sessions(graph.serialize(), "tts.dtype int8 and int4")
        self._sessions.get(1)

    def _session(self, rows: int) -> Any:
        return self._sessions.get(torch.get_num_threads() if rows >= _PREFILL_ROWS else 1)

    def run(self, **inputs: Tensor) -> list[Tensor]:
        feeds = {k: v.reshape(-1, v.shape[-1]).float().contiguous().numpy() for k, v in inputs.items()}
        rows = next(iter(feeds.values())).shape[0]
        return [torch.from_numpy(o) for o in self._session(rows).run(self.outputs, feeds)]


# The speech head's weights: int8 blocks whatever the layers' format. Its logits are what sampling
# sees (int4 would move them 8x further: max error 0.14 against int8's 0.017 on a random head whose
# logits reach 2.4), and at 1024 x 6563 it is 3% of Turbo's weights: int8 still reads it in 0.8 ms
# against fp32's 1.8 ms.
HEAD_BITS = 8


class QuantizedLayers:
    """A backbone's layers as ONNX segments: `entry(x)` = layer 0's QKV, then per layer i
    `after_attention(i, x, attended)` = (x after layer i, layer i+1's QKV or None after the last),
    and `logits(hidden)` = the speech head over the normed hidden states."""

    def __init__(self, layers: list[Any], quant: str, head: nn.Linear) -> None:
        # `layers`: tts.t3's layer modules (each with qkv, o, onnx_project and onnx_finish).
        if quant not in BITS:
            raise ValueError(f"unknown weight format {quant!r}: one of {', '.join(BITS)}")
        _onnx()
        bits = BITS[quant]
        first = Graph(bits)
        first.output(layers[0].onnx_project(first, first.input("x", layers[0].qkv.in_features)), "qkv",
                     layers[0].qkv.out_features)
        self.entry_segment = Segment(first)
        self.segments: list[Segment] = []
        for i, layer in enumerate(layers):
            g = Graph(bits)
            width = layer.o.out_features
            x = layer.onnx_finish(g, g.input("x", width), g.input("attended", layer.o.in_features))
            g.output(x, "x_out", width)
            if i + 1 < len(layers):
                g.output(layers[i + 1].onnx_project(g, x), "qkv", layers[i + 1].qkv.out_features)
            self.segments.append(Segment(g))
        g = Graph(HEAD_BITS)
        g.output(g.linear(g.input("hidden", head.in_features), head), "logits", head.out_features)
        self.head_segment = Segment(g)

    @property
    def weight_bytes(self) -> int:
        return (self.entry_segment.weight_bytes + sum(s.weight_bytes for s in self.segments)
                + self.head_segment.weight_bytes)

    def logits(self, hidden: Tensor) -> Tensor:
        """hidden (rows, dim), normed -> speech logits (rows, V), fp32."""
        (logits,) = self.head_segment.run(hidden=hidden)
        return logits

    def entry(self, x: Tensor) -> Tensor:
        """x (B, S, dim) -> layer 0's fused q|k|v (B, S, width)."""
        (qkv,) = self.entry_segment.run(x=x)
        return qkv.view(*x.shape[:-1], -1)

    def after_attention(self, i: int, x: Tensor, attended: Tensor) -> tuple[Tensor, Tensor | None]:
        outs = self.segments[i].run(x=x, attended=attended)
        lead = x.shape[:-1]
        return outs[0].view(*lead, -1), (outs[1].view(*lead, -1) if len(outs) > 1 else None)
