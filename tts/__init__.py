"""chatterd engine: text in, streaming PCM out (Chatterbox T3 + S3Gen). Knows no MQTT."""
