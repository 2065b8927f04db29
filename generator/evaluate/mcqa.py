"""Reading the option letter out of a model's multiple-choice reply, without guessing.

Models answer "B", "(B)", "B.", "The answer is B", "answer: b", "Option B", "It is B", "I think B",
"C'est B" or a paragraph that restates the options first. The parser looks for the letter in tiers, most explicit first (an "answer is ..."
phrase, then an "option X" mention, then a bare letter standing alone); within the first tier that names
any letter, exactly one distinct letter must be named. Two different letters named as the answer is
`ambiguous`, and so is a hedge that joins two letters ("A or maybe D", "B and C are both fine"); nothing
recognisable is `unparsable`. Both count as wrong in accuracy and are reported apart.

A lowercase bare "a" is an English article, so lowercase letters count only where the context makes
them a choice ("answer: b", "option c", "(d)", a reply that is just the letter).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Literal

ParseStatus = Literal["ok", "ambiguous", "unparsable"]

DEFAULT_LETTERS = "ABCD"

# Markdown and quoting noise models wrap a letter in: **B**, `B`, "B".
_NOISE = re.compile(r"[*_`\"'“”‘’]")


@dataclass(frozen=True)
class ChoiceParse:
    """What a reply chose: `letter` is set only when `status` is "ok"."""

    letter: str | None
    status: ParseStatus
    letters_named: tuple[str, ...] = ()


def _tier_patterns(letters: str) -> list[list[re.Pattern[str]]]:
    """The regexes of each tier; a tier's matches are only looked at when every earlier tier found none."""
    L = re.escape(letters.upper() + letters.lower())
    up = re.escape(letters.upper())
    # A letter token: in brackets (any case), or uppercase standing alone, or lowercase followed by
    # punctuation / end (so "the answer is a bit unclear" is not read as "a").
    letter = (
        rf"(?:[\(\[]\s*(?P<b>[{L}])\s*[\)\]]"
        rf"|(?-i:(?P<u>[{up}]))(?![A-Za-z0-9])"
        rf"|(?P<l>[{L}])(?=\s*(?:[.,;:!?)\]]|$)))"
    )
    option_word = r"(?:option|choice|letter)\s*"
    answer_lead = (
        r"(?:(?:correct|right|best|final)\s+)?(?:answer|option|choice)\s*"
        r"(?:(?:is|would\s+be|should\s+be|will\s+be)\s*:?|[:=\-]|\bis\s+option)\s*"
        r"|\b(?:i\s+(?:would\s+)?(?:choose|pick|select|go\s+with)|my\s+(?:answer|choice)\s*(?:is|:))\s*"
        # "It is B", "It's B", "I think B", "I'd say B", French "C'est B" / "La réponse est B" (quotes are
        # stripped as noise before matching, so "C'est" arrives as "Cest").
        r"|\b(?:it\s+is|its|it\s+would\s+be|i\s+think|i\s+believe|i\s+guess|id\s+say|i\s+would\s+say"
        r"|cest|la\s+r[ée]ponse\s+est|je\s+choisis|r[ée]ponse\s*:)\s*(?:that\s+)?(?:it\s+is\s+|its\s+)?"
    )
    # Two letters joined by "or" / "and" / "/" (maybe with "maybe", "perhaps"): a hedge, never a choice.
    joiner = r"\s*(?:,|/|&|\bor\b|\band\b|\bou\b|\bet\b)\s*(?:(?:maybe|perhaps|possibly|also|peut-[eê]tre)\s+)?"

    def hedge_letter(n: str) -> str:
        return rf"(?:[\(\[]\s*(?P<{n}b>[{L}])\s*[\)\]]|(?-i:(?P<{n}u>[{up}])))(?![A-Za-z0-9])"

    hedge = rf"{hedge_letter('h1')}{joiner}(?:{option_word})?{hedge_letter('h2')}"
    tier1 = [
        # "The answer is A or B": the hedge is tried first so its second letter is not lost.
        re.compile(rf"(?:{answer_lead})(?:{option_word})?{hedge}", re.IGNORECASE | re.MULTILINE),
        # ... unless the sentence goes on to reject it: "I think A is wrong".
        re.compile(
            rf"(?:{answer_lead})(?:{option_word})?{letter}(?!\s+(?:is|are)\s+(?:wrong|incorrect|not))",
            re.IGNORECASE | re.MULTILINE,
        ),
        # "B is the correct answer", "(c) is the most appropriate".
        re.compile(
            rf"(?:[\(\[]\s*(?P<b2>[{L}])\s*[\)\]]|(?<![A-Za-z])(?-i:(?P<u2>[{up}])))\s+is\s+(?:the\s+)?"
            r"(?:correct|right|best|most\s+appropriate)",
            re.IGNORECASE,
        ),
    ]
    tier2 = [re.compile(rf"\b{option_word}{letter}", re.IGNORECASE | re.MULTILINE)]
    tier3 = [
        # The whole reply is the letter, maybe bracketed or with a dot: "B", "(b)", "B.", "b)".
        re.compile(rf"^\s*[\(\[]?\s*(?P<w>[{L}])\s*[\)\].:]?\s*$"),
        # A line that opens with a hedge: "A or maybe D", "B and C are both fine".
        re.compile(rf"^\s*{hedge}", re.MULTILINE),
        # A line that starts with the letter and a closing mark: "B. Seek help ...", "B) ...", "(B) ...".
        re.compile(rf"^\s*(?:[\(\[]\s*(?P<s>[{L}])\s*[\)\]]|(?-i:(?P<t>[{up}]))[.):])", re.MULTILINE),
        # A bracketed letter anywhere: "... so (C) is right".
        re.compile(rf"[\(\[]\s*(?P<p>[{L}])\s*[\)\]]"),
    ]
    return [tier1, tier2, tier3]


_PATTERN_CACHE: dict[str, list[list[re.Pattern[str]]]] = {}


def parse_choice(reply: str | None, letters: str = DEFAULT_LETTERS) -> ChoiceParse:
    """The option letter a reply chose, or why none can be read (never a guess)."""
    if not reply or not reply.strip():
        return ChoiceParse(None, "unparsable")
    tiers = _PATTERN_CACHE.get(letters)
    if tiers is None:
        tiers = _PATTERN_CACHE[letters] = _tier_patterns(letters)
    # NFKC first: a fullwidth "Ｂ" or "（Ｂ）" (common from CJK-tuned models) is the letter B, and letter-like
    # compatibility forms never slip past the patterns.
    text = _NOISE.sub("", unicodedata.normalize("NFKC", reply))
    for tier in tiers:
        named: list[str] = []
        for pattern in tier:
            for m in pattern.finditer(text):
                named.extend(g.upper() for g in m.groups() if g)
        distinct = tuple(dict.fromkeys(named))
        if len(distinct) == 1:
            return ChoiceParse(distinct[0], "ok", distinct)
        if len(distinct) > 1:
            return ChoiceParse(None, "ambiguous", distinct)
    return ChoiceParse(None, "unparsable")


def option_letters(options: dict[str, str] | None) -> str:
    """The letters a case offers (its option keys), default A-D."""
    if not options:
        return DEFAULT_LETTERS
    keys = "".join(k.strip().upper() for k in options if len(k.strip()) == 1 and k.strip().isalpha())
    return keys or DEFAULT_LETTERS


def is_correct(parse: ChoiceParse, correct_option: str | None) -> bool:
    """Right only when a letter was read and it is the correct one; ambiguous/unparsable are wrong."""
    return parse.status == "ok" and correct_option is not None and parse.letter == correct_option.strip().upper()
