"""Text for T3: tag stripping, per-script normalisation and sentence splitting, the length guard."""

from __future__ import annotations

import math
import re
import unicodedata

# Punctuation T3 rarely saw in training, mapped to what it knows: upstream's punc_norm tables
# (tts.py and mtl_tts.py share PUNC_NORM; tts_turbo.py keeps "...", " - " and ";").
PUNC_NORM = (
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
TURBO_PUNC_NORM = tuple(pair for pair in PUNC_NORM if pair[0] not in ("...", " - ", ";"))
# Marks that end a text without a full stop added: upstream mtl_tts's sentence_enders, plus the
# Arabic question mark, comma, semicolon and full stop and the Devanagari danda and double danda.
_SENTENCE_END = (".", "!", "?", "-", ",", "、", "，", "。", "？", "！", "؟", "،", "؛", "۔", "।", "॥")
# Languages written without spaces between words or sentences.
UNSPACED = frozenset({"zh", "ja"})
_FULL_STOP = {"zh": "。", "ja": "。", "hi": "।"}
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
# Bracketed tag words: [laugh], [clear throat], [Sigh] (letters only; "[1]" is not a tag).
_TAG = re.compile(r"\s*(\[[^\W\d_]+(?:[ _-][^\W\d_]+)*\])")
_BEFORE_PUNCTUATION = tuple(".,!?;:)]}\"'" + "".join(_SENTENCE_END))


def strip_tags(text: str, keep: frozenset[str] = frozenset()) -> tuple[str, list[str]]:
    """Remove bracketed tag words from `text` except those in `keep`; return the text and the removed.

    A kept tag is written as in `keep` ("[Laugh]" -> "[laugh]"). A removed tag takes the space
    before it along ("Hi [laugh], you" -> "Hi, you"); nothing is spelled out.
    """
    removed: list[str] = []
    lowered = {tag.lower(): tag for tag in keep}

    def replace(match: re.Match[str]) -> str:
        tag = match.group(1)
        if tag.lower() in lowered:
            return match.group(0).replace(tag, lowered[tag.lower()])
        removed.append(tag)
        before, after = match.string[: match.start()], match.string[match.end() :]
        if not before.strip() or not after.strip() or after.lstrip().startswith(_BEFORE_PUNCTUATION):
            return ""
        return " " if match.group(0)[0].isspace() and not after[0].isspace() else ""

    cleaned = _TAG.sub(replace, text)
    return (cleaned.strip() if removed else cleaned), removed


def normalize(text: str, language: str | None = None, *, punctuation: tuple[tuple[str, str], ...] = PUNC_NORM) -> str:
    """Clean text for T3: NFC, no control characters, single spaces, known punctuation, a final stop.

    `punctuation` is the family's replacement table (PUNC_NORM, TURBO_PUNC_NORM). The final stop is
    the script's own: 。 for zh/ja, । for hi, "." otherwise (Arabic writes "."). Greek keeps ";",
    its question mark.
    """
    text = unicodedata.normalize("NFC", text)
    text = _CONTROL.sub(" ", text)
    text = " ".join(text.split())
    if not text:
        return ""
    if text[0].islower():
        text = text[0].upper() + text[1:]
    for old, new in punctuation:
        if not (language == "el" and old == ";"):
            text = text.replace(old, new)
    text = text.rstrip(" ")
    if not text.endswith(_SENTENCE_END) and not (language == "el" and text.endswith(";")):
        text += _FULL_STOP.get(language or "", ".")
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
_CLOSERS = "\"')\\]”’」』）》"
# A sentence ends at .!? (and the Arabic, Devanagari and CJK marks) followed by whitespace; in
# zh/ja the CJK marks (and ! ?) end it without whitespace too. Group "gap" is dropped at a cut.
_SENTENCE_BOUNDARY = re.compile(rf"[.!?。！？؟۔।॥]+[{_CLOSERS}]*(?P<gap>\s+)")
_SENTENCE_BOUNDARY_UNSPACED = re.compile(
    rf"[.!?。！？؟۔।॥]+[{_CLOSERS}]*(?P<gap>\s+)|[。！？!?｡]+[{_CLOSERS}]*(?P<cjk>\s*)"
)
_SENTENCE_BOUNDARY_EL = re.compile(rf"[.!?;؟]+[{_CLOSERS}]*(?P<gap>\s+)")  # Greek ";" asks a question
_CLAUSE_BOUNDARY = re.compile(r"(?<=[,;:،؛，、；：])\s+|\s+(?=-\s)")
_CLAUSE_BOUNDARY_UNSPACED = re.compile(r"(?<=[,;:，、；：])\s*|\s+(?=-\s)")


def split_sentences(text: str, max_chars: int, language: str | None = None) -> list[str]:
    """Cut `text` into pieces of at most `max_chars` characters, in order, for one T3 call each.

    Pieces are sentences; a sentence longer than `max_chars` is cut at clause boundaries (commas,
    semicolons, colons, dashes; Arabic ، ؛ and CJK ，、；：), a clause still too long at word
    boundaries, a word still too long anywhere. Sentences end at . ! ? and at Arabic ؟ ۔,
    Devanagari । ॥ and CJK 。！？ (Greek: also ";"). A full stop after an abbreviation or an
    initial ("Dr. Smith", "J. Smith") or before a lower-case word does not end a sentence.

    Whitespace runs become single spaces and the whitespace at a cut is dropped. In spaced scripts
    every cut but one inside an over-long word is at a space, so `join_sentences(pieces, language)`
    (single spaces) gives the collapsed text back. In zh/ja (`UNSPACED`) sentences and clauses end
    at CJK marks without a space after them, and `join_sentences` (no spaces) gives the text back
    when no cut falls on a space, as in text written in those scripts. `normalize` is left to
    each piece.
    """
    if max_chars < 1:
        raise ValueError("max_chars must be >= 1")
    unspaced = language in UNSPACED
    clean = " ".join(text.split())
    clause_boundary = _CLAUSE_BOUNDARY_UNSPACED if unspaced else _CLAUSE_BOUNDARY
    pieces: list[str] = []
    for sentence in _sentences(clean, language):
        if len(sentence) <= max_chars:
            pieces.append(sentence)
            continue
        for clause in _pack(_cut(sentence, clause_boundary), max_chars):
            if len(clause) <= max_chars:
                pieces.append(clause)
                continue
            for words in _pack([(word, " ") for word in clause.split(" ")], max_chars):
                pieces.extend(words[i : i + max_chars] for i in range(0, len(words), max_chars))
    return pieces


def group_sentences(pieces: list[str], max_chars: int, language: str | None = None) -> list[str]:
    """Join consecutive pieces of `split_sentences` into as few engine calls as `max_chars` allows,
    the first piece alone.

    Every call restarts T3's prefill and the vocoder's chunk schedule (a small first chunk, then
    chunks that each repeat the voice prompt and context), so a paragraph spoken in fewer calls
    keeps up with playback better; the first piece stays alone because first audio waits for it.
    `join_sentences(groups, language)` gives `join_sentences(pieces, language)` back.
    """
    groups = pieces[:1]
    sep = "" if language in UNSPACED else " "
    for piece in pieces[1:]:
        if len(groups) > 1 and len(groups[-1]) + len(sep) + len(piece) <= max_chars:
            groups[-1] = groups[-1] + sep + piece
        else:
            groups.append(piece)
    return groups


def join_sentences(pieces: list[str], language: str | None = None) -> str:
    """The inverse of `split_sentences` (see its docstring for when it is exact)."""
    return ("" if language in UNSPACED else " ").join(pieces)


def _sentences(text: str, language: str | None) -> list[str]:
    boundary = {"el": _SENTENCE_BOUNDARY_EL}.get(language or "", _SENTENCE_BOUNDARY)
    if language in UNSPACED:
        boundary = _SENTENCE_BOUNDARY_UNSPACED
    sentences: list[str] = []
    start = 0
    for match in boundary.finditer(text):
        if match.end() == len(text):
            break
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


def _cut(text: str, boundary: re.Pattern[str]) -> list[tuple[str, str]]:
    """`text` cut at each match of `boundary`: (part, the whitespace after it) pairs."""
    parts: list[tuple[str, str]] = []
    start = 0
    for match in boundary.finditer(text):
        if match.start() > start:
            parts.append((text[start : match.start()], match.group()))
            start = match.end()
    parts.append((text[start:], ""))
    return parts


def _pack(parts: list[tuple[str, str]], max_chars: int) -> list[str]:
    """Join consecutive parts (each with the gap that follows it) into as few strings of at most
    `max_chars` as possible; the gap at a cut is dropped."""
    packed: list[str] = []
    current = ""
    gap = ""
    for part, next_gap in parts:
        if not part:
            continue
        candidate = f"{current}{gap}{part}" if current else part
        if len(candidate) <= max_chars or not current:
            current = candidate
        else:
            packed.append(current)
            current = part
        gap = next_gap
    if current:
        packed.append(current)
    return packed
