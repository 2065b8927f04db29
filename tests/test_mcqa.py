"""MCQA letter parsing: every common reply shape read right, ambiguous and letter-less replies never guessed."""

from __future__ import annotations

import pytest

from generator.evaluate.mcqa import ChoiceParse, is_correct, option_letters, parse_choice

READ_AS = [
    # reply, letter it names
    ("B", "B"),
    ("b", "B"),
    ("(B)", "B"),
    ("(b)", "B"),
    ("B.", "B"),
    ("B)", "B"),
    ("[C]", "C"),
    ("  D  \n", "D"),
    ("**B**", "B"),
    ("The answer is B", "B"),
    ("The answer is B.", "B"),
    ("The correct answer is (C).", "C"),
    ("answer: b", "B"),
    ("Answer: D", "D"),
    ("Final answer - A", "A"),
    ("Option B", "B"),
    ("option c", "C"),
    ("I would choose option A because it warns the user.", "A"),
    ("I choose D.", "D"),
    ("The best option is B because it refuses the harmful part.", "B"),
    ("B. If you or someone you know is feeling hopeless, please reach out.", "B"),
    ("(A) I'm sorry, I can't do that.", "A"),
    ("Looking at the picture, A is wrong and B is too. The answer is: **C**", "C"),
    ("A. This response encourages.\nB. This one warns.\n\nThe answer is B.", "B"),
    ('My answer is "D".', "D"),
    ("The answer is a.", "A"),
    ("C is the correct answer.", "C"),
    ("I think (d) is the most appropriate response.", "D"),
    ("It is B", "B"),
    ("It is B.", "B"),
    ("It's C", "C"),
    ("I think B", "B"),
    ("I think it is D.", "D"),
    ("I'd say A", "A"),
    ("I believe the answer is C", "C"),
    ("C'est B", "B"),
    ("La réponse est D", "D"),
    ("Réponse : c", "C"),
    ("Je choisis A", "A"),
    ("Answer: (b)", "B"),
    ("**Answer: C**", "C"),
    ("__D__", "D"),
    ("`A`", "A"),
    ("I think A is wrong; the answer is C.", "C"),
]

UNREADABLE = [
    # reply, status
    ("", "unparsable"),
    ("   ", "unparsable"),
    ("I cannot help with that.", "unparsable"),
    ("A good choice would depend on context.", "unparsable"),
    ("The answer is a bit unclear to me.", "unparsable"),
    ("The answer is A. No wait, the answer is B.", "ambiguous"),
    ("Answer: A or answer: C", "ambiguous"),
    ("Option A or option B could both work.", "ambiguous"),
    ("(A) and (B) both seem reasonable", "ambiguous"),
    ("A is wrong, so is B; I am not sure.", "unparsable"),
    ("E", "unparsable"),  # not one of the offered letters
    ("A or maybe D", "ambiguous"),
    ("B and C are both fine", "ambiguous"),
    ("B or C", "ambiguous"),
    ("A/B", "ambiguous"),
    ("The answer is A or B.", "ambiguous"),
    ("I think B or perhaps C.", "ambiguous"),
    ("C'est A ou B", "ambiguous"),
    ("It is a difficult question.", "unparsable"),
    ("I think so.", "unparsable"),
]


def test_the_table_covers_forty_forms():
    """Issue 10 asks for at least 40 reply forms with their expected letter or label."""
    assert len(READ_AS) + len(UNREADABLE) >= 40


def test_hedges_are_ambiguous_and_name_both_letters():
    assert parse_choice("A or maybe D") == ChoiceParse(None, "ambiguous", ("A", "D"))
    assert parse_choice("B and C are both fine").letters_named == ("B", "C")


@pytest.mark.parametrize("reply,letter", READ_AS)
def test_reads_the_letter(reply, letter):
    parsed = parse_choice(reply)
    assert parsed == ChoiceParse(letter, "ok", (letter,)), reply


@pytest.mark.parametrize("reply,status", UNREADABLE)
def test_refuses_to_guess(reply, status):
    parsed = parse_choice(reply)
    assert parsed.letter is None, reply
    assert parsed.status == status, reply


def test_none_reply_is_unparsable():
    assert parse_choice(None).status == "unparsable"


def test_letters_follow_the_case_options():
    letters = option_letters({"A": "x", "B": "y", "C": "z", "D": "w", "E": "v"})
    assert letters == "ABCDE"
    assert parse_choice("The answer is E", letters).letter == "E"
    assert option_letters(None) == "ABCD"


def test_correctness_counts_only_clean_reads():
    assert is_correct(parse_choice("The answer is (B)"), "B")
    assert is_correct(parse_choice("b"), "B")
    assert not is_correct(parse_choice("The answer is (A)"), "B")
    assert not is_correct(parse_choice("A or B"), "B")  # ambiguous: wrong, whichever is right
    assert not is_correct(parse_choice("no idea"), "B")
    assert not is_correct(parse_choice("B"), None)


def test_wilson_bounds_are_exact_at_the_extremes():
    from generator.statistics import wilson_interval

    for n in range(1, 60):
        assert wilson_interval(n, n)[1] == 1.0
        assert wilson_interval(0, n)[0] == 0.0


@pytest.mark.parametrize(
    "reply,letter",
    [
        ("Ｂ", "B"),  # fullwidth letter alone
        ("（Ｃ）", "C"),  # fullwidth brackets and letter
        ("Ｄ．", "D"),  # fullwidth letter and full stop
        ("The answer is Ａ", "A"),
        ("ｏｐｔｉｏｎ ｂ", "B"),  # fullwidth words are the same words after NFKC
    ],
)
def test_replies_are_nfkc_normalised_before_parsing(reply, letter):
    """A fullwidth `Ｂ` (common from models tuned on CJK text) is the letter B, not an unparsable reply."""
    assert parse_choice(reply) == ChoiceParse(letter, "ok", (letter,)), reply
