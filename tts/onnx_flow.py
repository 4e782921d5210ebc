"""S3Gen's flow in ONNX Runtime on a CPU: the token encoder and the flow estimator, fp32.

Both are compute-bound on a CPU and run once per chunk over the voice prompt, the context and the
new tokens. On an AVX-512 core (2-core EPYC with avx512_bf16, 2026-12-07) ONNX Runtime's MLAS
ran them 1.9-2.2x faster than torch's fp32 at the same output (relative error ~1e-6), and the
estimator at or above torch's bf16 speed, whose error is 2.4e-2 (`chatterd bench parts`; README
"Performance"). On an AVX2-only core the estimator gained 1.0-1.3x at the steady state's window
sizes, under the issue's 1.5x bar, so `tts.flow_runtime: auto` picks ONNX Runtime only with
AVX-512 (tts.loading.pick_flow_runtime). CUDA keeps torch (compiled graphs, CUDA graphs).

Each module is exported from upstream's own modules (weights included) once per engine load, with
the frame axis dynamic, and runs through one session per thread count (`tts.onnx_sessions`).
"""

from __future__ import annotations

import io
import time
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from tts.onnx_sessions import Sessions
from tts.vocoder import TokenEncoder

_OPSET = 17
PURPOSE = "tts.flow_runtime onnxruntime"


def export(module: torch.nn.Module, example: tuple[Tensor, ...], inputs: Sequence[str],
           dynamic: dict[str, dict[int, str]]) -> bytes:
    """`module` traced on `example` into an ONNX model with the weights inside, as bytes."""
    buffer = io.BytesIO()
    # Tracing cannot run in inference mode. Its warnings say where Python control flow was fixed
    # at the example's values: shape checks that hold for every length (tests/test_vocoder.py runs
    # other lengths and row counts against torch).
    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # type: ignore[attr-defined]
        torch.onnx.export(module.eval(), example, buffer,  # type: ignore[arg-type]  # a file-like works
                          input_names=list(inputs), output_names=["out"], opset_version=_OPSET, dynamic_axes=dynamic)
    return buffer.getvalue()


class OnnxModule:
    """An exported module: call it with tensors in the export's input order, get its fp32 output;
    it runs on the calling thread's torch thread count."""

    def __init__(self, model: bytes, inputs: Sequence[str]) -> None:
        self._inputs = list(inputs)
        self._sessions = Sessions(model, PURPOSE)
        self._used: set[str] | None = None  # the inputs the graph reads (every session's alike)
        self.export_s = 0.0

    def prepare(self, thread_counts: Sequence[int]) -> None:
        """Make the sessions for these thread counts now (~0.3 s each) and drop the serialised model
        (the estimator's is 280 MB): another count later runs on the closest of these."""
        for threads in thread_counts:
            self._sessions.get(threads)
        self._sessions.release()

    def __call__(self, *tensors: Tensor) -> Tensor:
        session = self._sessions.get(torch.get_num_threads())
        if self._used is None:
            # An input the graph never reads (the original's estimator ignores r) is not in the export.
            self._used = {i.name for i in session.get_inputs()}
        feeds = {name: _numpy(t) for name, t in zip(self._inputs, tensors, strict=True) if name in self._used}
        return torch.from_numpy(session.run(None, feeds)[0])


def _numpy(t: Tensor) -> Any:
    array = t.detach().contiguous().cpu().numpy()
    return array if array.dtype != np.float64 else array.astype(np.float32)


def token_encoder(flow: Any) -> OnnxModule:
    """Upstream flow's tokens (1, N) -> (1, 2N, 80) in ONNX Runtime (StreamingVocoder's `encoder`)."""
    t0 = time.perf_counter()
    n = 84  # any length: the axis is dynamic
    model = export(TokenEncoder(flow), (torch.zeros(1, n, dtype=torch.long), torch.tensor([n])),
                   ["tokens", "lengths"], {"tokens": {1: "tokens"}, "out": {1: "frames"}})
    runner = OnnxModule(model, ["tokens", "lengths"])
    runner.export_s = time.perf_counter() - t0
    return runner


ESTIMATOR_INPUTS = ("x", "mask", "mu", "t", "spks", "cond", "r")


def estimator(unet: torch.nn.Module, frames: int = 100) -> OnnxModule:
    """A FlowEstimator's U-Net (x, mask, mu, t, spks, cond, r) -> velocity (B, 80, T), exported."""
    t0 = time.perf_counter()
    args = (torch.zeros(1, 80, frames), torch.ones(1, 1, frames), torch.zeros(1, 80, frames), torch.tensor([0.5]),
            torch.zeros(1, 80), torch.zeros(1, 80, frames), torch.tensor([1.0]))
    axis = {"x": {0: "rows", 2: "frames"}, "mask": {0: "rows", 2: "frames"}, "mu": {0: "rows", 2: "frames"},
            "t": {0: "rows"}, "spks": {0: "rows"}, "cond": {0: "rows", 2: "frames"}, "r": {0: "rows"},
            "out": {0: "rows", 2: "frames"}}
    runner = OnnxModule(export(unet, args, ESTIMATOR_INPUTS, axis), ESTIMATOR_INPUTS)
    runner.export_s = time.perf_counter() - t0
    return runner
