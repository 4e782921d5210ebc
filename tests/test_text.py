"""Sentence splitting for long text: sentence, then clause, then word boundaries."""

from __future__ import annotations

import pytest

from tts.text import TURBO_PUNC_NORM, group_sentences, join_sentences, normalize, split_sentences, strip_tags


def test_sentences_are_split_at_their_ends() -> None:
    text = "The door is open! Is the light on? Yes.  It is.\nGood night"
    expected = ["The door is open!", "Is the light on?", "Yes.", "It is.", "Good night"]
    assert split_sentences(text, 300) == expected


def test_abbreviations_initials_decimals_and_lower_case_do_not_end_a_sentence() -> None:
    text = 'Dr. Smith met J. R. Jones at 3.5 degrees, approx. five times. "Quoted." Done.'
    assert split_sentences(text, 300) == [
        "Dr. Smith met J. R. Jones at 3.5 degrees, approx. five times.",
        '"Quoted."',
        "Done.",
    ]


def test_long_sentences_are_cut_at_clauses_then_words() -> None:
    text = "One, two, three, four; five, six: seven - eight. Short."
    assert split_sentences(text, 20) == ["One, two, three,", "four; five, six:", "seven - eight.", "Short."]
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa"
    assert split_sentences(words, 20) == ["alpha beta gamma", "delta epsilon zeta", "eta theta iota kappa"]
    assert split_sentences("x" * 45, 20) == ["x" * 20, "x" * 20, "x" * 5]


def test_sentences_after_the_first_are_grouped_up_to_the_limit() -> None:
    pieces = split_sentences("Hi. The door is open. The light is on. It rains. Bye.", 300)
    assert group_sentences(pieces, 300) == ["Hi.", "The door is open. The light is on. It rains. Bye."]
    assert group_sentences(pieces, 30) == ["Hi.", "The door is open.", "The light is on. It rains.", "Bye."]
    assert group_sentences(["一。", "二。", "三。"], 10, "zh") == ["一。", "二。三。"]
    assert group_sentences([], 300) == [] and group_sentences(["Alone."], 300) == ["Alone."]
    long_text = "A sentence. Another one, with a clause; and more: the end - really. " * 7
    for limit in (20, 60, 300):
        groups = group_sentences(split_sentences(long_text, limit), limit)
        assert all(len(g) <= limit for g in groups)
        assert join_sentences(groups) == join_sentences(split_sentences(long_text, limit))


@pytest.mark.parametrize(
    "text",
    [
        "A sentence. Another one, with a clause; and more: the end - really. " * 7,
        "word " * 200,
        "Mixed! Lengths? Of. Sentences, some of them much longer than the limit allows for here.",
    ],
)
def test_pieces_respect_the_limit_and_keep_every_word_in_order(text: str) -> None:
    pieces = split_sentences(text, 40)
    assert all(0 < len(p) <= 40 for p in pieces)
    assert " ".join(pieces) == " ".join(text.split())


def test_empty_text_has_no_pieces() -> None:
    assert split_sentences(" \n ", 50) == []
    with pytest.raises(ValueError):
        split_sentences("x", 0)


# --- per-script splitting and normalisation, tags ------------------------------------------


def test_cjk_sentences_end_without_spaces_and_join_without_them() -> None:
    text = "前门开着。厨房的灯亮着！你好吗？「好」。最后"
    pieces = split_sentences(text, 300, "zh")
    assert pieces == ["前门开着。", "厨房的灯亮着！", "你好吗？", "「好」。", "最后"]
    assert join_sentences(pieces, "zh") == text
    long = "前门开着，厨房的灯亮着，窗户关着、我们回家了。"
    pieces = split_sentences(long, 8, "ja")
    assert pieces == ["前门开着，", "厨房的灯亮着，", "窗户关着、", "我们回家了。"]
    assert join_sentences(pieces, "ja") == long
    assert split_sentences("x" * 20 + "。", 8, "zh") == ["x" * 8, "x" * 8, "xxxx。"]


def test_arabic_devanagari_and_greek_marks_end_sentences_at_spaces() -> None:
    arabic = "مرحبا؟ كيف حالك، يا صديقي. شكرا"
    assert split_sentences(arabic, 300, "ar") == ["مرحبا؟", "كيف حالك، يا صديقي.", "شكرا"]
    assert split_sentences(arabic, 14, "ar") == ["مرحبا؟", "كيف حالك،", "يا صديقي.", "شكرا"]
    hindi = "नमस्ते। आप कैसे हैं॥ ठीक"
    assert split_sentences(hindi, 300, "hi") == ["नमस्ते।", "आप कैसे हैं॥", "ठीक"]
    assert split_sentences("Τι κάνεις; Καλά.", 300, "el") == ["Τι κάνεις;", "Καλά."]
    for text, language in ((arabic, "ar"), (hindi, "hi"), ("The door. 前门开着。Open", None)):
        pieces = split_sentences(text, 12, language)
        assert join_sentences(pieces, language) == " ".join(text.split())


@pytest.mark.parametrize("language", [None, "en", "de", "ar", "hi", "zh", "ja"])
def test_no_character_is_lost_or_repeated_in_any_script(language: str | None) -> None:
    text = "前门开着。 The door, it is open!  مرحبا؟ नमस्ते। 厨房的灯亮着，窗户关着。" * 3
    pieces = split_sentences(text, 10, language)
    assert all(0 < len(p) <= 10 for p in pieces)
    assert "".join("".join(pieces).split()) == "".join(text.split())


def test_normalize_adds_the_scripts_own_full_stop() -> None:
    assert normalize("前门开着", "zh") == "前门开着。"
    assert normalize("台所の電気", "ja") == "台所の電気。"
    assert normalize("नमस्ते", "hi") == "नमस्ते।"
    assert normalize("مرحبا", "ar") == "مرحبا."
    assert normalize("Guten Tag", "de") == "Guten Tag."
    for ended in ("前门开着。", "你好吗？", "好！", "前门，", "مرحبا؟", "مرحبا،", "नमस्ते।", "ठीक॥"):
        assert normalize(ended, "zh") == ended
    assert normalize("Τι κάνεις;", "el") == "Τι κάνεις;"  # the Greek question mark is kept
    assert normalize("one; two", "en") == "One,  two."  # upstream's table, double space and all


def test_normalize_keeps_the_english_behaviour_and_takes_the_familys_table() -> None:
    assert normalize("  hello \x07 there... “ok”: yes - no;") == 'Hello there,  "ok", yes, no,'
    assert normalize("") == ""
    assert normalize("wait... what - now;", punctuation=TURBO_PUNC_NORM) == "Wait... what - now;."


def test_tags_are_stripped_without_leaving_double_spaces() -> None:
    assert strip_tags("Hi [laugh], you [clear throat] there [Sigh]") == (
        "Hi, you there",
        ["[laugh]", "[clear throat]", "[Sigh]"],
    )
    assert strip_tags("[sigh] Okay.") == ("Okay.", ["[sigh]"])
    assert strip_tags("Footnote [1] stays.") == ("Footnote [1] stays.", [])
    assert strip_tags("No tags here.") == ("No tags here.", [])


def test_kept_tags_pass_through_in_their_canonical_form() -> None:
    keep = frozenset({"[laugh]", "[clear throat]"})
    assert strip_tags("Ha [Laugh] so [clear throat] [wink].", keep) == ("Ha [laugh] so [clear throat].", ["[wink]"])
