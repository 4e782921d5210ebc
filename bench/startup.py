"""`chatterd bench startup`: load + warm-up time with torch.compile, cold and warm compile cache.

Each start is a fresh process (as a restarted service is). The first uses an empty cache directory
(`tts.cache_dir`, where Inductor's compiled kernels go); the second reuses it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

_START = """
import json, sys, time
t0 = time.perf_counter()
from tts.config import TTSConfig
from tts.engine import StreamingTTS
engine = StreamingTTS.load(TTSConfig(**json.loads(sys.argv[1])))
t1 = time.perf_counter()
graphs = {}
engine.warm_up(progress=lambda done, total, what: graphs.__setitem__(what, graphs.get(what, 0) + 1))
t2 = time.perf_counter()
print(json.dumps({"load_s": t1 - t0, "warm_up_s": t2 - t1, "buckets": graphs.get("T3 step graph", 0),
                  "flow_buckets": graphs.get("flow estimator graph", 0)}))
"""


def run(family: str, checkpoint: Path, dtype: str, max_speech_tokens: int, max_text_tokens: int) -> dict[str, Any]:
    settings = {"model": family, "checkpoint": str(checkpoint), "dtype": dtype, "compile": True,
                "max_speech_tokens": max_speech_tokens, "max_text_tokens": max_text_tokens}
    results: dict[str, Any] = {"settings": settings}
    with tempfile.TemporaryDirectory() as cache:
        settings["cache_dir"] = cache
        for label in ("cold", "warm"):
            out = subprocess.run([sys.executable, "-c", _START, json.dumps(settings)], check=True,
                                 capture_output=True, text=True)
            results[label] = json.loads(out.stdout.strip().splitlines()[-1])
    return results


def report(results: dict[str, Any]) -> str:
    s = results["settings"]
    lines = [f"startup with compile ({s.get('model', 'original')}, {s['dtype']}, KV cache for "
             f"{s['max_text_tokens']} text + {s['max_speech_tokens']} speech tokens):"]
    for label in ("cold", "warm"):
        r = results[label]
        lines.append(f"  {label} cache: load {r['load_s']:.1f} s, warm-up {r['warm_up_s']:.1f} s (T3: "
                     f"{r['buckets']} step graphs; flow estimator: {r.get('flow_buckets', 'every')} window "
                     "buckets; one request)")
    return "\n".join(lines)
