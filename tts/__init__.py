"""chatterd engine: text in, streaming PCM out (Chatterbox T3 + S3Gen). Knows no MQTT."""

import os

# oneDNN (torch's CPU convolutions) keeps 1024 built kernels by default; HiFT's ~60 convolutions
# at each of its bucketed lengths (tts.vocoder.HIFT_BUCKET_MELS) and the flow's need more, and a
# kernel rebuilt costs ~10 ms. Read when torch first runs a oneDNN operator, so set before.
os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "8192")
