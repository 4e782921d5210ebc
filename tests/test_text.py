"""Sentence splitting for long text: sentence, then clause, then word boundaries."""

from __future__ import annotations

import pytest

from tts.text import split_sentences


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
