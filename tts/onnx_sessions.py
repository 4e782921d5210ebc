"""ONNX Runtime on a CPU: one model's sessions, one per thread count.

A session's intra-op pool is fixed when it is made, while the engine's threads change with the
pipelined split (the vocoder runs on one core while T3 decodes on the other, on every core
otherwise): each thread count gets its own session, made once. Pools do not spin between runs:
beside torch's OpenMP team on two cores, a spinning pool made a two-thread T3 step 25x slower.
"""

from __future__ import annotations

import threading
from typing import Any

from tts.errors import DeviceError


def onnx_modules(purpose: str) -> tuple[Any, Any]:
    """(onnx, onnxruntime); DeviceError naming `purpose` where they are not installed."""
    try:
        import onnx
        import onnxruntime
    except ImportError as exc:  # pragma: no cover - dependencies of the package
        raise DeviceError(f"{purpose} needs onnx and onnxruntime (pip install onnx onnxruntime)") from exc
    return onnx, onnxruntime


class Sessions:
    """Sessions of one serialised ONNX model, keyed by intra-op thread count (1: the caller's thread)."""

    def __init__(self, model: bytes, purpose: str) -> None:
        self._model: bytes | None = model
        self._purpose = purpose
        self._sessions: dict[int, Any] = {}
        self._lock = threading.Lock()

    def get(self, threads: int) -> Any:
        session = self._sessions.get(threads)
        if session is None:
            with self._lock:
                session = self._sessions.get(threads)
                if session is None:
                    if self._model is None:  # released: the closest one made
                        return self._sessions[min(self._sessions, key=lambda n: (abs(n - threads), -n))]
                    session = self._sessions[threads] = self._new(threads)
        return session

    def release(self) -> None:
        """Drop the serialised model (hundreds of MB for the flow): no further sessions are made;
        another thread count then runs on the closest one made."""
        with self._lock:
            if self._sessions:
                self._model = None

    def _new(self, threads: int) -> Any:
        assert self._model is not None
        _, ort = onnx_modules(self._purpose)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return ort.InferenceSession(self._model, options, providers=["CPUExecutionProvider"])
