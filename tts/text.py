"""Text normalisation for T3 and the length guard."""

from __future__ import annotations

import math
import re
import unicodedata

# Punctuation T3 rarely saw in training, mapped to what it knows (as upstream's punc_norm does).
_REPLACEMENTS = (
    ("...", ", "),
    ("…", ", "),
    (":", ","),
    (" - ", ", "),
    (";", ", "),
    ("—", "-"),
    ("–", "-"),
    (" ,", ","),
    ("“", '"'),
    ("”", '"'),
    ("‘", "'"),
    ("’", "'"),
)
_SENTENCE_END = (".", "!", "?", "-", ",")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def normalize(text: str) -> str:
    """Clean text for T3: NFC, no control characters, single spaces, known punctuation, a final stop."""
    text = unicodedata.normalize("NFC", text)
    text = _CONTROL.sub(" ", text)
    text = " ".join(text.split())
    if not text:
        return ""
    if text[0].islower():
        text = text[0].upper() + text[1:]
    for old, new in _REPLACEMENTS:
        text = text.replace(old, new)
    text = text.rstrip(" ")
    if not text.endswith(_SENTENCE_END):
        text += "."
    return text


def token_budget(text: str, tokens_per_char: float, max_tokens: int) -> int:
    """The length guard: speech tokens allowed for `text` (25 tokens = 1 s of audio).

    Ordinary speech runs at about 15 characters per second, i.e. 1.7 tokens per character; the
    guard gives room above that and ends generation whose stop token never comes.
    """
    return max(1, min(max_tokens, math.ceil(len(text) * tokens_per_char)))
