"""Runs the seed's streaming method (PyPI `chatterbox-streaming` 0.1.2, `generate_stream`) on a chatterd
checkpoint and prints JSON timings. It runs in the baseline's own virtual environment (see
bench/setup-baseline), so it imports nothing from chatterd.

    var/baseline-venv/bin/python bench/baseline_runner.py --checkpoint DIR --text T \
        --chunk-size 25 --context-window 50 --chunks 3 --repeats 3 --out result.json

The package's `from_local` wants `.pt` files; its modules are built here from the safetensors state
dicts instead (all keys match). A random-weight T3 never stops by itself, so each run consumes the
first `--chunks` chunks of the stream and closes it. Results go to `--out` as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any


def load(checkpoint: Path) -> Any:  # a chatterbox.tts.ChatterboxTTS (the baseline package's)
    import torch
    from chatterbox.models.s3gen import S3Gen
    from chatterbox.models.t3 import T3
    from chatterbox.models.tokenizers import EnTokenizer
    from chatterbox.models.voice_encoder import VoiceEncoder
    from chatterbox.tts import ChatterboxTTS, Conditionals
    from safetensors.torch import load_file

    ve = VoiceEncoder()
    ve.load_state_dict(load_file(checkpoint / "ve.safetensors"))
    t3 = T3()
    t3.load_state_dict(load_file(checkpoint / "t3_cfg.safetensors"))
    s3gen = S3Gen()
    s3gen.load_state_dict(load_file(checkpoint / "s3gen.safetensors"), strict=False)
    tokenizer = EnTokenizer(str(checkpoint / "tokenizer.json"))
    conds = Conditionals.load(checkpoint / "conds.pt", map_location=torch.device("cpu"))
    for module in (ve, t3, s3gen):
        module.eval()
    return ChatterboxTTS(t3, s3gen, ve, tokenizer, "cpu", conds=conds)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--text", required=True)
    parser.add_argument("--chunk-size", type=int, default=25)
    parser.add_argument("--context-window", type=int, default=50)
    parser.add_argument("--chunks", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, required=True,
                        help="JSON result file (stdout carries the package's prints)")
    args = parser.parse_args()
    os.environ.setdefault("TQDM_DISABLE", "1")
    import torch

    model = load(args.checkpoint)
    runs = []
    for repeat in range(args.repeats):
        torch.manual_seed(repeat)
        start = time.perf_counter()
        chunks = []
        stream = model.generate_stream(args.text, chunk_size=args.chunk_size, context_window=args.context_window,
                                       print_metrics=False)
        for audio, _metrics in stream:
            chunks.append((time.perf_counter() - start, int(audio.shape[-1])))
            if len(chunks) == args.chunks:
                break
        stream.close()
        runs.append({"chunks": chunks})
        print(f"baseline run {repeat}: first chunk {chunks[0][0]:.2f} s, {len(chunks)} chunks", file=sys.stderr)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    args.out.write_text(json.dumps({"runs": runs, "peak_rss_mb": peak_mb, "sample_rate": model.sr,
                                    "torch": torch.__version__, "threads": torch.get_num_threads()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
