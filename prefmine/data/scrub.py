"""PII scrubbing for free review text before it reaches a tokenizer.

Reviews sometimes carry e-mail addresses, phone numbers, links and even card numbers ("my card 4111 1111 ...
was charged twice"). None of that helps a preference model and none of it may end up in a vocabulary, a
checkpoint or a log, so review text is passed through `scrub_text` first. Each kind is replaced by a fixed
placeholder: "[email]", "[url]", "[card]", "[phone]".

The patterns are deliberately conservative about ordinary review content: ratings ("4/5"), years, prices
("$1,299.00"), quantities, dates ("12/25/2017", "2017-12-25"), model numbers ("iPhone 7"), "24/7" and a brand
mention such as "Amazon.com" are left alone. Order matters: links first (they may hold '@' and digits), then
e-mails, then cards (13-19 digits in groups of 3+), then phones, so that a card is never labelled a phone.

Scrubbing millions of short texts is dominated by the regexes, so `scrub_texts` first checks, with one cheap
search, whether a text could hold any PII at all (a digit, '@', '/' or 'www'); most short reviews cannot.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

KINDS = ("url", "email", "card", "phone")
PLACEHOLDER = {kind: f"[{kind}]" for kind in KINDS}

# Every pattern below needs one of these; a text without any of them is returned as is.
_TRIGGER = re.compile(r"[0-9@/]|www", re.IGNORECASE)

# Characters that may not directly precede a number for it to count as a stand-alone number.
_NUM_BEFORE = r"(?<![\w$€£+.,/-])"
# ... and what may not follow it ("12/25/2017", "1,299.00", "4111-1111-abc").
_NUM_AFTER = r"(?!\w|[.,/:-]\d)"

_URL_END = r"[^\s<>\"'\[\]]*[^\s<>\"'\[\].,;:!?)\]}]"
_TLDS = r"(?:com|net|org|edu|gov|io|co|uk|de|fr|ca|au|info|biz|us|me|ly|gl|tv|app|shop|store)"
_URL = re.compile(
    rf"(?:\b(?:https?|ftp)://|\bwww\.){_URL_END}"  # scheme or www.
    rf"|(?<![@\w.-])(?:[a-z0-9](?:[a-z0-9-]*[a-z0-9])?\.)+{_TLDS}/(?:{_URL_END})?",  # bare domain with a path
    re.IGNORECASE | re.ASCII,
)
_EMAIL = re.compile(
    r"(?<![\w.%+-])[a-z0-9](?:[a-z0-9._%+-]*[a-z0-9_%+-])?@(?:[a-z0-9](?:[a-z0-9-]*[a-z0-9])?\.)+[a-z]{2,}\b",
    re.IGNORECASE | re.ASCII,
)
# Card candidates: one run of digits, or a 4-digit group then groups of 3-6 (4-4-4-4, 4-6-5, 4-4-4-4-3) joined by
# single spaces or dashes; 13-19 digits in all is checked in code. An order number such as 112-1234567-1234567
# is neither.
_CARD = re.compile(rf"{_NUM_BEFORE}(?:\d{{13,19}}|\d{{4}}(?:[ -]\d{{3,6}}){{2,4}}){_NUM_AFTER}", re.ASCII)
_PHONE = re.compile(
    rf"{_NUM_BEFORE}(?:"
    r"\+\d{1,3}[ .-]?(?:\(\d{1,4}\)[ .-]?)?\d{1,5}(?:[ .-]?\d{1,5}){1,5}"  # +country code, any grouping
    r"|(?:1[ .-]?)?(?:\(\d{3}\)[ .-]?|\d{3}[ .-]?)\d{3}[ .-]?\d{4}"  # North American 3-3-4, optional leading 1
    r"|(?:\(0\d{1,4}\)|0\d{1,4})(?:[ .-]?\d{2,6}){1,3}"  # national with trunk 0: 07700 900123, 020 7946 0958
    rf"){_NUM_AFTER}",
    re.ASCII,
)
_DIGIT = re.compile(r"\d", re.ASCII)
_YEARS = re.compile(r"(?:19|20)\d\d(?:[ -](?:19|20)\d\d)+", re.ASCII)


@dataclass
class ScrubStats:
    """Running totals over many texts, e.g. for a dataset manifest."""

    texts: int = 0
    changed: int = 0
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))

    def add(self, counts: dict[str, int]) -> None:
        self.texts += 1
        if any(counts.values()):
            self.changed += 1
        for kind, n in counts.items():
            self.counts[kind] = self.counts.get(kind, 0) + n

    def as_dict(self) -> dict:
        return {"texts": self.texts, "changed": self.changed, **self.counts}


def _as_text(value) -> str:
    """"" for None / NaN / pd.NA, the string itself for a str, str() of anything else."""
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    try:
        missing = bool(value != value)  # NaN, NaT
    except TypeError:  # pd.NA refuses bool()
        missing = True
    return "" if missing else str(value)


def _digit_count(s: str) -> int:
    return len(_DIGIT.findall(s))


def _is_card(s: str) -> bool:
    """13-19 digits, and not a run of years ("2015 2016 2017 2018")."""
    return 13 <= _digit_count(s) <= 19 and _YEARS.fullmatch(s) is None


def _is_phone(s: str) -> bool:
    return 10 <= _digit_count(s) <= 15


def _replacer(kind: str, counts: dict[str, int], accept: Callable[[str], bool] | None = None):
    placeholder = PLACEHOLDER[kind]

    def repl(m: re.Match) -> str:
        if accept is not None and not accept(m.group(0)):
            return m.group(0)
        counts[kind] += 1
        return placeholder

    return repl


def _scrub(text: str, counts: dict[str, int]) -> str:
    text = _URL.sub(_replacer("url", counts), text)
    if "@" in text:
        text = _EMAIL.sub(_replacer("email", counts), text)
    text = _CARD.sub(_replacer("card", counts, _is_card), text)
    return _PHONE.sub(_replacer("phone", counts, _is_phone), text)


def scrub_text_counted(text: str | None) -> tuple[str, dict[str, int]]:
    """The scrubbed text and how many of each kind ("url", "email", "card", "phone") were replaced."""
    counts = dict.fromkeys(KINDS, 0)
    s = _as_text(text)
    if not s or _TRIGGER.search(s) is None:
        return s, counts
    return _scrub(s, counts), counts


def scrub_text(text: str | None) -> str:
    """Review text with e-mails, URLs, card numbers and phone numbers replaced by placeholders; "" for None/NaN."""
    return scrub_text_counted(text)[0]


def scrub_texts(values: Iterable, stats: ScrubStats | None = None) -> list[str]:
    """`scrub_text` over an iterable (None/NaN -> ""), optionally adding per-kind totals to `stats`."""
    out: list[str] = []
    append = out.append
    trigger = _TRIGGER.search
    for value in values:
        s = _as_text(value)
        if s and trigger(s) is not None:
            counts = dict.fromkeys(KINDS, 0)
            s = _scrub(s, counts)
            if stats is not None:
                stats.add(counts)
        elif stats is not None:
            stats.texts += 1
        append(s)
    return out
