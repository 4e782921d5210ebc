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


# Words that end with a full stop without ending a sentence ("Dr. Smith", "approx. 5").
_ABBREVIATIONS = frozenset(
    "mr mrs ms dr prof sr jr st mt vs etc approx ca cf fig no nr vol dept est inc ltd co corp gen col "
    "lt sgt capt gov sen rep rev hr min sec jan feb mar apr jun jul aug sep sept oct nov dec e.g i.e".split()
)
_SENTENCE_BOUNDARY = re.compile(r"[.!?]+[\"')\]]*\s+")
_CLAUSE_BOUNDARY = re.compile(r"(?<=[,;:])\s+|\s+(?=-\s)")


def split_sentences(text: str, max_chars: int) -> list[str]:
    """Cut `text` into pieces of at most `max_chars` characters, in order, for one T3 call each.

    Pieces are sentences; a sentence longer than `max_chars` is cut at clause boundaries (commas,
    semicolons, colons, dashes), a clause still too long at word boundaries, a word still too long
    anywhere. A full stop after an abbreviation or an initial ("Dr. Smith", "J. Smith") or before
    a lower-case word does not end a sentence. Whitespace runs become single spaces and joining
    the pieces with single spaces gives that text back; `normalize` is left to each piece.
    """
    if max_chars < 1:
        raise ValueError("max_chars must be >= 1")
    clean = " ".join(text.split())
    pieces: list[str] = []
    for sentence in _sentences(clean):
        if len(sentence) <= max_chars:
            pieces.append(sentence)
            continue
        for clause in _pack(_CLAUSE_BOUNDARY.split(sentence), max_chars):
            if len(clause) <= max_chars:
                pieces.append(clause)
                continue
            for words in _pack(clause.split(" "), max_chars):
                pieces.extend(words[i : i + max_chars] for i in range(0, len(words), max_chars))
    return pieces


def _sentences(text: str) -> list[str]:
    sentences: list[str] = []
    start = 0
    for match in _SENTENCE_BOUNDARY.finditer(text):
        before = text[start : match.start()].rsplit(" ", 1)[-1].lower()
        after = text[match.end() : match.end() + 1]
        if match.group().startswith(".") and (
            before in _ABBREVIATIONS or (len(before) == 1 and before.isalpha()) or after.islower()
        ):
            continue  # "Dr. Smith", "J. Smith", "approx. five": not the end of a sentence
        sentences.append(text[start : match.end()].rstrip())
        start = match.end()
    if text[start:].strip():
        sentences.append(text[start:].strip())
    return sentences


def _pack(parts: list[str], max_chars: int) -> list[str]:
    """Join consecutive parts with spaces into as few strings of at most `max_chars` as possible."""
    packed: list[str] = []
    current = ""
    for part in parts:
        if not part:
            continue
        candidate = f"{current} {part}" if current else part
        if len(candidate) <= max_chars or not current:
            current = candidate
        else:
            packed.append(current)
            current = part
    if current:
        packed.append(current)
    return packed
