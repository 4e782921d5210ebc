"""Text tokenizers for each Chatterbox family: loading, encoding, and random stand-ins.

Every loader returns a `TextTokenizer`: `encode(text, language)` gives the raw text ids (no
start/stop text tokens: the decoder adds its family's prefix layout), `vocab_size` bounds them, and
`tags` names the tag tokens that pass through as single ids (empty for families without tags).
A missing or unusable file raises `CheckpointError` naming the file and the family.

* original: upstream's `EnTokenizer` (a `tokenizers` JSON, spaces spelled `[SPACE]`).
* turbo: GPT-2 BPE through `transformers.AutoTokenizer`, exactly as upstream `tts_turbo` loads it.
* multilingual: upstream's `MTLTokenizer` front-ends (lowercase, NFKD, per-language conversion, a
  `[xx]` language token first), with the Cangjie table read from the checkpoint directory itself.

The `write_*` functions build tokenizers for `make-checkpoint --random` that load through the same
loaders as the real files, offline.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import random
import threading
import unicodedata
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from tts.errors import CheckpointError, LanguageUnavailable

log = logging.getLogger(__name__)

# Upstream's special tokens (chatterbox/models/tokenizers/tokenizer.py: SOT, EOT, UNK, SPACE).
# T3Config hard-codes start_text_token=255 and stop_text_token=0; the real vocabularies put
# [START] and [STOP] at those ids, and the random ones here do too.
SOT, EOT, UNK, SPACE = "[START]", "[STOP]", "[UNK]", "[SPACE]"
START_TEXT_ID, STOP_TEXT_ID = 255, 0
_SPECIALS = [EOT, UNK, SPACE, "[PAD]", "[SEP]", "[CLS]", "[MASK]"]  # ids 0..6, as upstream's files

MTL_TOKENIZER_FILE = "grapheme_mtl_merged_expanded_v1.json"
CANGJIE_FILE = "Cangjie5_TC.json"
MTL_VOCAB_SIZE = 2454  # T3Config.multilingual().text_tokens_dict_size
GPT2_VOCAB_SIZE = 50276  # tts_turbo: T3Config(text_tokens_dict_size=50276); len(tokenizer) checked
GPT2_EOS = "<|endoftext|>"

# Upstream's mtl_tts.SUPPORTED_LANGUAGES, restated: importing chatterbox costs seconds (its
# __init__ imports every model); tests/test_tokenizers.py checks this equals upstream's.
MTL_LANGUAGES: dict[str, str] = {
    "ar": "Arabic", "da": "Danish", "de": "German", "el": "Greek", "en": "English",
    "es": "Spanish", "fi": "Finnish", "fr": "French", "he": "Hebrew", "hi": "Hindi",
    "it": "Italian", "ja": "Japanese", "ko": "Korean", "ms": "Malay", "nl": "Dutch",
    "no": "Norwegian", "pl": "Polish", "pt": "Portuguese", "ru": "Russian", "sv": "Swedish",
    "sw": "Swahili", "tr": "Turkish", "zh": "Chinese",
}  # fmt: skip

# The tag tokens of ResembleAI/chatterbox-turbo, in id order from 50257 (GPT-2's 50257 ids, then
# these 19: 50276 in all). Sources: the model's added_tokens.json as cited in
# huggingface.co/ResembleAI/chatterbox-turbo/discussions/21 (the nine sound tags) and the mirror
# huggingface.co/ModelsLab/chatterbox-turbo/blob/main/tokenizer_config.json (added_tokens_decoder:
# 50257 [angry], 50258 [fear], 50259 [surprised], 50260 [whispering], 50261 [advertisement],
# 50262 [dramatic], 50263 [narration], ...); Replicate's resemble-ai/chatterbox-turbo schema lists
# the nine sound tags as supported. The order after [narration] is from an ONNX port's tag enum.
TURBO_TAGS: tuple[str, ...] = (
    "[angry]", "[fear]", "[surprised]", "[whispering]", "[advertisement]", "[dramatic]",
    "[narration]", "[crying]", "[happy]", "[sarcastic]", "[clear throat]", "[sigh]", "[shush]",
    "[cough]", "[groan]", "[sniff]", "[gasp]", "[chuckle]", "[laugh]",
)  # fmt: skip


class TextTokenizer(Protocol):
    """What a decoder needs from a family's tokenizer."""

    vocab_size: int
    tags: frozenset[str]

    def encode(self, text: str, language: str | None) -> list[int]:
        """Raw text ids for normalised `text`: no start/stop text tokens."""
        ...

    def prepare(self, language: str) -> None:
        """Set up `language`'s front-end now (at warm-up) rather than on its first request."""
        ...


def _is_tag(token: str) -> bool:
    inner = token[1:-1]
    return token.startswith("[") and token.endswith("]") and inner.replace(" ", "").isalpha()


def _load_json_tokenizer(path: Path, family: str) -> Any:
    from tokenizers import Tokenizer

    if not path.is_file():
        raise CheckpointError(f"{path}: missing; the {family} model's tokenizer needs it")
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises plain Exception subclasses
        raise CheckpointError(f"{path}: not a usable {family} tokenizer ({exc})") from exc
    vocab = tokenizer.get_vocab()
    if SOT not in vocab or EOT not in vocab:  # upstream asserts the same (check_vocabset_sot_eot)
        raise CheckpointError(f"{path}: the {family} tokenizer lacks {SOT} or {EOT}")
    return tokenizer


# --- original --------------------------------------------------------------------------------


class CharTokenizer:
    """The original model's tokenizer: upstream EnTokenizer.encode (spaces become [SPACE])."""

    tags: frozenset[str] = frozenset()

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        self.vocab_size: int = tokenizer.get_vocab_size()

    def encode(self, text: str, language: str | None = None) -> list[int]:
        ids: list[int] = self._tokenizer.encode(text.replace(" ", SPACE)).ids
        return ids

    def prepare(self, language: str) -> None:
        """Nothing to set up: one front-end for every text."""


def load_char_tokenizer(path: Path) -> CharTokenizer:
    """The original family's tokenizer.json."""
    return CharTokenizer(_load_json_tokenizer(Path(path), "original"))


def write_char_tokenizer(path: Path) -> None:
    """A character-level tokenizer.json with upstream's special tokens at upstream's ids.

    T3 hard-codes start_text_token=255 and stop_text_token=0, so [STOP] is id 0 and [START] id 255.
    """
    chars = (
        "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
        ".,!?;:'\"-()&%$#@/+=*<>[]_~`^|\\{}"
        "àáâãäåæçèéêëìíîïñòóôõöøùúûüýÿßœÀÁÂÄÇÈÉÊËÎÏÑÓÔÖØÙÚÛÜ€£"
    )
    tokens = [*_SPECIALS, *chars]
    assert len(tokens) < START_TEXT_ID, "character set must fit below [START]"
    _save_char_vocab(Path(path), tokens, START_TEXT_ID + 1, [SOT, *_SPECIALS])


def _save_char_vocab(path: Path, tokens: list[str], size: int, added: list[str]) -> None:
    """Save a merge-free BPE (one token per character) of `tokens` in order, [START] at 255,
    reserved ids filling up to exactly `size`; `added` are matched before the model runs."""
    from tokenizers import Tokenizer, models

    vocab: dict[str, int] = {}
    for token in tokens:
        if len(vocab) == START_TEXT_ID:
            vocab[SOT] = START_TEXT_ID
        vocab.setdefault(token, len(vocab))
    while len(vocab) < size:  # reserved ids, so the vocabulary has no holes
        vocab[SOT if len(vocab) == START_TEXT_ID else f"[UNUSED{len(vocab)}]"] = len(vocab)
    if len(vocab) != size or vocab[SOT] != START_TEXT_ID or vocab[EOT] != STOP_TEXT_ID:
        raise AssertionError(f"{len(vocab)} tokens do not fit {size} ids with [START] at {START_TEXT_ID}")
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=UNK))
    tokenizer.add_special_tokens(added)
    tokenizer.save(str(path))
    # tokenizers writes a compact file; keep it human-diffable.
    path.write_text(json.dumps(json.loads(path.read_text()), indent=1, ensure_ascii=False))


# --- turbo -----------------------------------------------------------------------------------


class GPT2Tokenizer:
    """Turbo's tokenizer: upstream tokenizes with `tokenizer(text, padding=True, truncation=True)`."""

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        self.vocab_size: int = len(tokenizer)
        self.tags = frozenset(t for t in tokenizer.get_added_vocab() if _is_tag(t))

    def encode(self, text: str, language: str | None = None) -> list[int]:
        # Padding is a no-op for one text; truncation stops at model_max_length as upstream's does.
        ids: list[int] = self._tokenizer(text, truncation=True)["input_ids"]
        return ids

    def prepare(self, language: str) -> None:
        """Nothing to set up: one front-end for every text."""


def load_gpt2_tokenizer(ckpt_dir: Path) -> GPT2Tokenizer:
    """Turbo's tokenizer from `ckpt_dir`, loaded as upstream's ChatterboxTurboTTS.from_local does."""
    ckpt_dir = Path(ckpt_dir)
    config = ckpt_dir / "tokenizer_config.json"
    has_vocab = (ckpt_dir / "tokenizer.json").is_file() or all(
        (ckpt_dir / name).is_file() for name in ("vocab.json", "merges.txt")
    )
    if not config.is_file() or not has_vocab:
        missing = "tokenizer_config.json" if not config.is_file() else "tokenizer.json (or vocab.json + merges.txt)"
        raise CheckpointError(f"{ckpt_dir}: lacks {missing}; the turbo model's GPT-2 tokenizer needs it")
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(ckpt_dir))
    except Exception as exc:  # transformers raises OSError, ValueError, JSON errors, ...
        raise CheckpointError(f"{ckpt_dir}: not a usable turbo tokenizer ({exc})") from exc
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if len(tokenizer) != GPT2_VOCAB_SIZE:  # upstream only prints a warning
        log.warning("%s: turbo tokenizer has %d tokens, expected %d", ckpt_dir, len(tokenizer), GPT2_VOCAB_SIZE)
    return GPT2Tokenizer(tokenizer)


# Built-in English text the random GPT-2 BPE is trained on (plus seeded English-like words, so
# that training reaches GPT-2's 50000 merges).
_ENGLISH = """\
The front door is open. The kitchen light is on and the oven has been preheated to two hundred
degrees. Good morning! It is seven o'clock, the weather today is cloudy with a chance of rain in
the afternoon, and the temperature will reach eighteen degrees. Your package has been delivered to
the porch. The washing machine has finished its cycle. Someone is at the garage; the motion sensor
in the garden was triggered at a quarter past nine. Remember to take the bins out tonight. Dinner
is ready in five minutes. Would you like me to play some music in the living room? The battery of
the smoke detector in the hallway is low. The children's bedroom is warm, the thermostat is set to
twenty-one degrees, and the windows are closed. Hello there, how was your day? That's the funniest
thing I've heard all day. Sorry about that, as I was saying, the meeting starts at ten thirty.
"""
_SYLLABLES = (
    "th he in er an re on at en nd ti es or te of ed is it al ar st to nt ng se ha as ou io le ve co "
    "me de hi ri ro ic ne ea ra ce li ch ll be ma si om ur ca el ta la ns di fo ho pe ec pr no ct us "
    "ac ot il tr ly nc et ut ss so rs un lo wa ge ie wh ee wi em ad ol rt po we na ul ni ts mo ow pa"
).split()


def write_gpt2_tokenizer(out_dir: Path, vocab_size: int = GPT2_VOCAB_SIZE, tags: tuple[str, ...] = TURBO_TAGS) -> None:
    """A byte-level BPE of exactly `vocab_size` tokens in GPT-2's layout, loadable by AutoTokenizer.

    Byte alphabet and merges first, `<|endoftext|>` next (50256 for the real size), then `tags` as
    added tokens, as in chatterbox-turbo. Writes tokenizer.json and tokenizer_config.json.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Tokenizer as HFGPT2Tokenizer

    bpe_size = vocab_size - 1 - len(tags)
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=bpe_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tokenizer.train_from_iterator(_gpt2_corpus(), trainer)
    if tokenizer.get_vocab_size() != bpe_size:
        raise RuntimeError(f"BPE training reached {tokenizer.get_vocab_size()} tokens, not {bpe_size}")
    tokenizer.add_special_tokens([AddedToken(GPT2_EOS, special=True, normalized=True)])
    tokenizer.add_tokens([AddedToken(tag, special=False, normalized=True) for tag in tags])
    wrapped = HFGPT2Tokenizer(
        tokenizer_object=tokenizer, bos_token=GPT2_EOS, eos_token=GPT2_EOS, unk_token=GPT2_EOS,
        model_max_length=1024, add_prefix_space=False,
    )  # fmt: skip
    out_dir.mkdir(parents=True, exist_ok=True)
    wrapped.save_pretrained(str(out_dir))


def _gpt2_corpus() -> list[str]:
    rng = random.Random(0)
    words = ["".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 6))) for _ in range(60_000)]
    text = " ".join(words)
    return [_ENGLISH] * 20 + [text[i : i + 10_000] for i in range(0, len(text), 10_000)]


# --- multilingual ----------------------------------------------------------------------------

_warned: set[str] = set()
_warn_lock = threading.Lock()


def _warn_once(key: str, message: str, *args: object) -> None:
    """Log `message` once per process (a degraded front-end would otherwise warn per sentence)."""
    with _warn_lock:
        if key in _warned:
            return
        _warned.add(key)
    log.warning(message, *args)


def _upstream() -> Any:
    # Imported on first use: chatterbox's __init__ imports every model (seconds).
    from chatterbox.models.tokenizers import tokenizer

    return tokenizer


class MTLTokenizer:
    """Upstream MTLTokenizer.encode with each language's front-end used as upstream uses it.

    Differences, all where upstream would fail or repeat itself: the Cangjie table comes from the
    checkpoint directory (upstream's converter calls hf_hub_download(repo, cache_dir=ckpt_dir),
    which treats the directory as a hub cache and needs the network, or leaves Chinese unconverted);
    spacy-pkuseg is set up on first Chinese use, and a failed model download (offline) degrades to
    no segmentation as a missing package does upstream; a missing optional package (pykakasi,
    dicta_onnx, russian_text_stresser) is warned about once per process, not per sentence.
    """

    tags: frozenset[str] = frozenset()

    def __init__(self, tokenizer: Any, cangjie_file: Path) -> None:
        self._tokenizer = tokenizer
        self.vocab_size: int = tokenizer.get_vocab_size()
        self._cangjie_file = cangjie_file
        self._cangjie: Any = None  # upstream ChineseCangjieConverter, built on first Chinese use
        self._lock = threading.Lock()
        self._front_ends: dict[str, Callable[[str], str]] = {
            "zh": self._chinese,
            "ja": self._optional(
                "ja", "pykakasi", "hiragana_normalize", "kanji stay unconverted", "pip install pykakasi"
            ),
            "he": self._optional(
                "he", "dicta_onnx", "add_hebrew_diacritics", "no diacritics are added", "pip install dicta-onnx"
            ),
            "ko": lambda text: str(_upstream().korean_normalize(text)),
            "ru": self._optional(
                "ru",
                "russian_text_stresser",
                "add_russian_stress",
                "no stress marks are added",
                "it is not on PyPI: install it from its source",
            ),
        }
        if not cangjie_file.is_file():
            log.warning("%s: missing; Chinese (zh) cannot be spoken with this checkpoint", cangjie_file)

    def encode(self, text: str, language: str | None) -> list[int]:
        """As upstream: lowercase, NFKD, the language's front-end, `[xx]` first, spaces as [SPACE]."""
        text = unicodedata.normalize("NFKD", text.lower())
        if language:
            language = language.lower()
            front_end = self._front_ends.get(language)
            if front_end is not None:
                text = front_end(text)
            text = f"[{language}]{text}"
        ids: list[int] = self._tokenizer.encode(text.replace(" ", SPACE)).ids
        return ids

    def prepare(self, language: str) -> None:
        """Set up `language`'s front-end now (a warm-up), not on its first sentence."""
        self.encode("。", language)

    def _optional(self, language: str, module: str, function: str, degraded: str, install: str) -> Callable[[str], str]:

        def front_end(text: str) -> str:
            if importlib.util.find_spec(module) is None:
                _warn_once(
                    f"{language}:{module}",
                    "%s (%s) is spoken without its text front-end: %s is not installed, so %s "
                    "(%s)", MTL_LANGUAGES[language], language, module, degraded, install,
                )  # fmt: skip
                return text
            return str(getattr(_upstream(), function)(text))

        return front_end

    def _chinese(self, text: str) -> str:
        with self._lock:
            if self._cangjie is None:
                self._cangjie = self._cangjie_converter()
        return str(self._cangjie(text))

    def _cangjie_converter(self) -> Any:
        if not self._cangjie_file.is_file():
            raise LanguageUnavailable(
                "zh",
                f"Chinese (zh) needs {self._cangjie_file.name} in the checkpoint directory "
                f"{self._cangjie_file.parent}; fetch it from the hub repo ResembleAI/chatterbox",
            )
        word2cj, cj2word = read_cangjie(self._cangjie_file)
        upstream = _upstream()
        # Upstream's converter, without its __init__ (which downloads the table): same encoding.
        converter = upstream.ChineseCangjieConverter.__new__(upstream.ChineseCangjieConverter)
        converter.word2cj, converter.cj2word = word2cj, cj2word
        converter.segmenter = _pkuseg()
        return converter


def read_cangjie(path: Path) -> tuple[dict[str, str], dict[str, list[str]]]:
    """Upstream's Cangjie tables from a list of "glyph\\tcode[...]" strings."""
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
        word2cj: dict[str, str] = {}
        cj2word: dict[str, list[str]] = {}
        for entry in entries:
            word, code = entry.split("\t")[:2]
            word2cj[word] = code
            cj2word.setdefault(code, []).append(word)
    except (OSError, ValueError, TypeError, AttributeError) as exc:
        raise CheckpointError(f"{path}: not a usable Cangjie table for the multilingual model ({exc})") from exc
    return word2cj, cj2word


def _pkuseg() -> Any:
    """spacy-pkuseg's segmenter as upstream builds it, or None (no word segmentation) with one warning."""
    try:
        from spacy_pkuseg import pkuseg
    except ImportError:
        _warn_once(
            "zh:pkuseg",
            "Chinese (zh) without word segmentation: spacy-pkuseg is not installed (pip install spacy-pkuseg)",
        )
        return None
    try:
        return pkuseg()
    except (OSError, RuntimeError) as exc:  # offline: requests' ConnectionError; a bad download: hash RuntimeError
        _warn_once(
            "zh:pkuseg",
            "Chinese (zh) without word segmentation: spacy-pkuseg could not fetch its model (%s); "
            "put it in ~/.pkuseg (or $PKUSEG_HOME) to segment",
            exc,
        )
        return None


def load_mtl_tokenizer(ckpt_dir: Path) -> MTLTokenizer:
    """The multilingual family's tokenizer from `ckpt_dir` (grapheme json + Cangjie table)."""
    ckpt_dir = Path(ckpt_dir)
    tokenizer = _load_json_tokenizer(ckpt_dir / MTL_TOKENIZER_FILE, "multilingual")
    missing = [f"[{code}]" for code in MTL_LANGUAGES if tokenizer.token_to_id(f"[{code}]") is None]
    if missing:
        raise CheckpointError(f"{ckpt_dir / MTL_TOKENIZER_FILE}: the multilingual tokenizer lacks {' '.join(missing)}")
    cangjie = ckpt_dir / CANGJIE_FILE
    if cangjie.is_file():
        read_cangjie(cangjie)  # a broken table is a broken checkpoint: say so at load
    return MTLTokenizer(tokenizer, cangjie)


# Characters of the random multilingual vocabulary: what upstream's front-ends produce for the
# 23 languages after lowercasing and NFKD (combining marks, conjoining Hangul jamo, kana with
# separate voicing marks), by Unicode block.
_MTL_BLOCKS = (
    (0x21, 0x7E),  # ASCII
    (0xA1, 0x17F),  # Latin-1 supplement, Latin Extended-A (ł, ı, ş, ...)
    (0x300, 0x36F),  # combining diacritics (NFKD)
    (0x370, 0x3FF),  # Greek
    (0x400, 0x4FF),  # Cyrillic
    (0x590, 0x5FF),  # Hebrew
    (0x600, 0x6FF),  # Arabic
    (0x900, 0x97F),  # Devanagari
    (0x1100, 0x11FF),  # Hangul jamo
    (0x2010, 0x205E),  # general punctuation
    (0x3000, 0x303F),  # CJK punctuation
    (0x3040, 0x30FF),  # hiragana, katakana
)
_CANGJIE_CODES = "abcdefghijklmnopqrstuvwxyz.0123456789"  # letters, the end mark, homograph index
# A small Cangjie5_TC table in upstream's format (glyph, tab, code), enough for tests' sentences.
_CANGJIE_SAMPLE = {
    "前": "tbln", "门": "ilr", "开": "mt", "着": "tqbu", "厨": "mgit", "房": "hsys", "的": "hapi",
    "灯": "fmn", "亮": "yrbu", "你": "onf", "好": "vnd", "今": "oin", "天": "mk", "很": "hoav",
    "冷": "imoii", "我": "hqi", "们": "oln", "回": "wr", "家": "jmso", "了": "nn", "关": "tmk",
    "上": "ym", "窗": "jchwk", "户": "is", "早": "aj", "安": "jv", "晚": "anau", "一": "m",
    "人": "o", "大": "k", "中": "l", "国": "wmgi", "是": "amyo", "不": "mf", "在": "klg",
}  # fmt: skip


def write_mtl_tokenizer(out_dir: Path) -> None:
    """A grapheme tokenizer json at upstream's 2454 ids plus a small Cangjie5_TC.json.

    [STOP] 0 and [START] 255 (T3Config's stop/start text ids), [SPACE], the 23 `[xx]` language
    tokens and the `[cj_*]` Cangjie code tokens as added tokens, then the characters of the scripts
    the 23 languages use; reserved ids fill the rest.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    language_tokens = [f"[{code}]" for code in MTL_LANGUAGES]
    cangjie_tokens = [f"[cj_{c}]" for c in _CANGJIE_CODES]
    chars = [chr(cp) for lo, hi in _MTL_BLOCKS for cp in range(lo, hi + 1) if unicodedata.category(chr(cp)) != "Cn"]
    added = [*_SPECIALS, *language_tokens, *cangjie_tokens]
    _save_char_vocab(out_dir / MTL_TOKENIZER_FILE, [*added, *chars], MTL_VOCAB_SIZE, [SOT, *added])
    entries = [f"{glyph}\t{code}" for glyph, code in _CANGJIE_SAMPLE.items()]
    (out_dir / CANGJIE_FILE).write_text(json.dumps(entries, ensure_ascii=False, indent=0), encoding="utf-8")
