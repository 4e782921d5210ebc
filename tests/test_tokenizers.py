"""Tokenizer loaders and the random tokenizers (no model weights loaded)."""

from __future__ import annotations

import ast
import importlib.util
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import tts.tokenizers as tk
from tts.errors import CheckpointError
from tts.tokenizers import (
    GPT2_VOCAB_SIZE,
    MTL_LANGUAGES,
    MTL_VOCAB_SIZE,
    START_TEXT_ID,
    STOP_TEXT_ID,
    TURBO_TAGS,
    load_char_tokenizer,
    load_gpt2_tokenizer,
    load_mtl_tokenizer,
    write_char_tokenizer,
    write_gpt2_tokenizer,
    write_mtl_tokenizer,
)

SENTENCES = {
    "de": "Die Küche ist warm, schöne Grüße!",
    "ja": "台所の電気がついています。ドアは開いています。",
    "zh": "前门开着。厨房的灯亮着。",
}


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("turbo")
    write_gpt2_tokenizer(out)
    return out


@pytest.fixture(scope="module")
def mtl_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("mtl")
    write_mtl_tokenizer(out)
    return out


@pytest.fixture(autouse=True)
def fresh_warnings() -> Iterator[None]:
    tk._warned.clear()
    yield
    tk._warned.clear()


@pytest.fixture
def offline_pkuseg(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """spacy-pkuseg whose model download fails as it does offline; counts the attempts."""
    import spacy_pkuseg

    calls: list[int] = []

    def pkuseg(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        raise ConnectionError("Failed to resolve 'github.com'")

    monkeypatch.setattr(spacy_pkuseg, "pkuseg", pkuseg)
    return calls


def test_char_tokenizer_matches_upstream_entokenizer_without_start_stop(tmp_path: Path) -> None:
    write_char_tokenizer(tmp_path / "tokenizer.json")
    ours = load_char_tokenizer(tmp_path / "tokenizer.json")
    from chatterbox.models.tokenizers import EnTokenizer

    upstream = EnTokenizer(str(tmp_path / "tokenizer.json"))
    text = "The front door is open, Dr. Smith!"
    assert ours.encode(text, None) == upstream.text_to_tokens(text)[0].tolist()
    assert START_TEXT_ID not in ours.encode(text, None) and ours.vocab_size == START_TEXT_ID + 1
    assert ours.tags == frozenset()


def test_random_gpt2_tokenizer_loads_like_the_real_one(gpt2_dir: Path) -> None:
    tok = load_gpt2_tokenizer(gpt2_dir)
    assert tok.vocab_size == GPT2_VOCAB_SIZE
    assert tok.tags == frozenset(TURBO_TAGS) and {"[laugh]", "[chuckle]", "[cough]", "[sigh]", "[gasp]"} <= tok.tags
    assert tok._tokenizer.pad_token == tok._tokenizer.eos_token == "<|endoftext|>"
    assert tok._tokenizer.convert_tokens_to_ids("<|endoftext|>") == 50256
    for tag in TURBO_TAGS:
        assert len(tok.encode(tag, None)) == 1
    ids = tok.encode("Oh, that's hilarious! [laugh] Anyway [clear throat].", None)
    assert tok.encode("[laugh]", None)[0] in ids and tok.encode("[clear throat]", None)[0] in ids
    # As upstream calls it: tokenizer(text, return_tensors="pt", padding=True, truncation=True).
    text = "Hi there [chuckle], the garage is closed."
    upstream = tok._tokenizer(text, return_tensors="pt", padding=True, truncation=True).input_ids
    assert tok.encode(text, None) == upstream[0].tolist()
    assert all(0 <= i < GPT2_VOCAB_SIZE for i in ids)


def test_random_mtl_tokenizer_layout(mtl_dir: Path) -> None:
    from tokenizers import Tokenizer

    vocab = Tokenizer.from_file(str(mtl_dir / tk.MTL_TOKENIZER_FILE)).get_vocab()
    assert len(vocab) == MTL_VOCAB_SIZE and sorted(vocab.values()) == list(range(MTL_VOCAB_SIZE))
    assert vocab["[START]"] == START_TEXT_ID and vocab["[STOP]"] == STOP_TEXT_ID
    assert all(f"[{code}]" in vocab for code in MTL_LANGUAGES)
    assert {"[SPACE]", "[cj_a]", "[cj_.]", "[cj_1]"} <= set(vocab)


@pytest.mark.parametrize("language", ["de", "ja", "zh"])
def test_random_mtl_tokenizer_encodes_without_unknown_ids(
    mtl_dir: Path, language: str, offline_pkuseg: list[int]
) -> None:
    tok = load_mtl_tokenizer(mtl_dir)
    ids = tok.encode(SENTENCES[language], language)
    unk = tok._tokenizer.token_to_id("[UNK]")
    assert ids[0] == tok._tokenizer.token_to_id(f"[{language}]")
    assert unk not in ids and START_TEXT_ID not in ids[1:] and STOP_TEXT_ID not in ids
    assert all(0 <= i < tok.vocab_size for i in ids)


def test_mtl_encode_matches_upstream_mtltokenizer(mtl_dir: Path, offline_pkuseg: list[int]) -> None:
    from chatterbox.models.tokenizers import MTLTokenizer

    ours = load_mtl_tokenizer(mtl_dir)
    upstream = MTLTokenizer.__new__(MTLTokenizer)  # its __init__ downloads the Cangjie table
    upstream.tokenizer = ours._tokenizer
    ours.encode("。", "zh")
    upstream.cangjie_converter = ours._cangjie
    for language, text in [
        *SENTENCES.items(),
        ("ko", "안녕하세요. 문이 열려 있어요."),
        ("en", "Hello."),
        (None, "Hi."),
    ]:
        assert ours.encode(text, language) == upstream.text_to_tokens(text, language_id=language)[0].tolist()


def test_chinese_degrades_offline_with_one_warning(
    mtl_dir: Path, offline_pkuseg: list[int], caplog: pytest.LogCaptureFixture
) -> None:
    tok = load_mtl_tokenizer(mtl_dir)
    with caplog.at_level(logging.WARNING, logger="tts.tokenizers"):
        first = tok.encode(SENTENCES["zh"], "zh")
        again = tok.encode(SENTENCES["zh"], "zh")
        load_mtl_tokenizer(mtl_dir).encode("前门开着。", "zh")  # another instance: still no second line
    warnings = [r for r in caplog.records if "segmentation" in r.getMessage()]
    assert len(warnings) == 1 and "Failed to resolve" in warnings[0].getMessage()
    assert first == again and len(first) > 1
    space = tok._tokenizer.token_to_id("[SPACE]")
    assert space not in first  # unsegmented: upstream joins pkuseg's words with spaces


def test_chinese_is_segmented_when_pkuseg_works(mtl_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import spacy_pkuseg

    class Segmenter:
        def cut(self, text: str) -> list[str]:
            return [text[:2], text[2:]]

    monkeypatch.setattr(spacy_pkuseg, "pkuseg", Segmenter)
    tok = load_mtl_tokenizer(mtl_dir)
    assert tok._tokenizer.token_to_id("[SPACE]") in tok.encode("前门开着。", "zh")


@pytest.mark.parametrize("language", ["he", "ru"])
def test_hebrew_and_russian_degrade_as_upstream_with_one_warning(
    mtl_dir: Path, language: str, caplog: pytest.LogCaptureFixture
) -> None:
    module = {"he": "dicta_onnx", "ru": "russian_text_stresser"}[language]
    if importlib.util.find_spec(module) is not None:
        pytest.skip(f"{module} is installed here")
    tok = load_mtl_tokenizer(mtl_dir)
    text = {"he": "שלום עולם.", "ru": "Привет, мир."}[language]
    with caplog.at_level(logging.WARNING, logger="tts.tokenizers"):
        ids = [tok.encode(text, language) for _ in range(3)]
    assert [r.getMessage() for r in caplog.records if module in r.getMessage()] == [caplog.records[0].getMessage()]
    assert ("pip install dicta-onnx" if language == "he" else "not on PyPI") in caplog.records[0].getMessage()
    assert ids[0] == ids[2] and tok._tokenizer.token_to_id("[UNK]") not in ids[0]


def test_chinese_without_its_cangjie_table_is_unavailable_and_others_work(mtl_dir: Path, tmp_path: Path) -> None:
    from tts.errors import LanguageUnavailable

    (tmp_path / tk.MTL_TOKENIZER_FILE).write_bytes((mtl_dir / tk.MTL_TOKENIZER_FILE).read_bytes())
    tok = load_mtl_tokenizer(tmp_path)
    with pytest.raises(LanguageUnavailable, match="Cangjie5_TC.json") as err:
        tok.encode("前门开着。", "zh")
    assert err.value.language == "zh"
    assert tok.encode("Guten Tag.", "de")[0] == tok._tokenizer.token_to_id("[de]")


def test_missing_or_broken_files_name_the_file_and_family(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"tokenizer\.json.*original"):
        load_char_tokenizer(tmp_path / "tokenizer.json")
    with pytest.raises(CheckpointError, match=r"tokenizer_config\.json.*turbo"):
        load_gpt2_tokenizer(tmp_path)
    with pytest.raises(CheckpointError, match=r"grapheme_mtl_merged_expanded_v1\.json.*multilingual"):
        load_mtl_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"tokenizer\.json: not a usable original"):
        load_char_tokenizer(tmp_path / "tokenizer.json")
    write_mtl_tokenizer(tmp_path)
    (tmp_path / tk.CANGJIE_FILE).write_text('["no tab here"]')
    with pytest.raises(CheckpointError, match=r"Cangjie5_TC\.json"):
        load_mtl_tokenizer(tmp_path)


def test_mtl_languages_are_upstreams() -> None:
    spec = importlib.util.find_spec("chatterbox")  # read upstream's source: importing it takes seconds
    assert spec is not None and spec.origin is not None
    tree = ast.parse((Path(spec.origin).parent / "mtl_tts.py").read_text())
    (node,) = [
        n for n in tree.body if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "") == "SUPPORTED_LANGUAGES"
    ]
    assert ast.literal_eval(node.value) == MTL_LANGUAGES and len(MTL_LANGUAGES) == 23
