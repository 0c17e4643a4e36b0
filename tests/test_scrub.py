"""PII scrubbing on real review lines (Gift_Cards 5-core): real text stays as is, planted PII goes."""

from __future__ import annotations

import gzip
import json
import math

import pytest

from prefmine.data.scrub import ScrubStats, scrub_text, scrub_text_counted, scrub_texts

PII = {
    "email": ["john.doe@gmail.com", "jane_smith+amazon@yahoo.co.uk", "A.B-C@sub.example.org"],
    "url": [
        "https://www.amazon.com/gp/product/B00X4WHP5E?ref=ppx_yo_dt",
        "http://example.com/review",
        "www.example.com",
        "amazon.com/foo/bar",
    ],
    "card": ["4111 1111 1111 1111", "4111-1111-1111-1111", "4111111111111111", "3782 822463 10005"],
    "phone": [
        "(555) 123-4567",
        "555-123-4567",
        "555.123.4567",
        "+1 555 123 4567",
        "+44 20 7946 0958",
        "07700 900123",
        "1-800-555-1234",
    ],
}

NOT_PII = [
    "5 stars",
    "4/5",
    "2018",
    "since 1999",
    "$19.99",
    "$1,299.00",
    "2 pack",
    "12 issues",
    "12/25/2017",
    "2017-12-25",
    "iPhone 7",
    "24/7",
    "Amazon.com",
    "got 3 for $25 in 2016, worked 24/7 for 12 months",
    "bought on 12/25/2017 and again on 2018-01-03, 5 stars, 4/5 for the box",
    "order 112-1234567-1234567",
    "every year 2015 2016 2017 2018",
    "10:30 am",
    "a 100 ml bottle for $1,299.00?!",
]


@pytest.fixture(scope="module")
def real_lines(raw_dir) -> list[str]:
    """reviewText and summary of the first 200 Gift_Cards 5-core reviews (reviewText may be missing)."""
    path = raw_dir / "amazon2018" / "Gift_Cards" / "Gift_Cards_5.json.gz"
    lines: list[str] = []
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for i, line in enumerate(f):
            if i >= 200:
                break
            review = json.loads(line)
            lines += [t for t in (review.get("reviewText"), review.get("summary")) if t]
    assert len(lines) >= 300
    return lines


@pytest.fixture(scope="module")
def plain_lines(real_lines) -> list[str]:
    """Real lines of several words with no digits, '@' or '/', so a planted value has clean neighbours."""
    out = [t for t in real_lines if len(t.split()) >= 6 and not any(c.isdigit() or c in "@/" for c in t)]
    assert len(out) >= 10
    return out[:10]


def test_real_lines_unchanged(real_lines):
    out = scrub_texts(real_lines)
    changed = [(a, b) for a, b in zip(real_lines, out) if a != b]
    for a, b in changed:
        print("changed:", a, "->", b)
    assert sum(a == b for a, b in zip(real_lines, out)) >= 0.95 * len(real_lines)
    # Whatever changed really held a link, an address or a long number.
    for a, _ in changed:
        assert "http" in a or "www" in a or "@" in a or sum(c.isdigit() for c in a) >= 10, a
    # Lines that cannot hold PII come back as the very same text.
    for a, b in zip(real_lines, out):
        if not any(c.isdigit() or c in "@/" for c in a) and "www" not in a.lower():
            assert a == b


def _planted(line: str, value: str) -> list[tuple[str, str]]:
    """(planted, template) pairs: `value` at the start, middle, end and in parentheses; "{}" marks its place."""
    words = line.split(" ")
    k = len(words) // 2
    middle_left, middle_right = " ".join(words[:k]), " ".join(words[k:])
    return [
        (f"{value} {line}", "{} " + line),
        (f"{middle_left} {value} {middle_right}", middle_left + " {} " + middle_right),
        (f"{line} {value}", line + " {}"),
        (f"{line} (call {value}).", line + " (call {})."),
    ]


@pytest.mark.parametrize("kind", sorted(PII))
def test_planted_pii_is_replaced(kind, plain_lines):
    placeholder = f"[{kind}]"
    for i, value in enumerate(PII[kind]):
        line = plain_lines[i % len(plain_lines)]
        for planted, template in _planted(line, value):
            out, counts = scrub_text_counted(planted)
            assert value not in out, (planted, out)
            assert out == template.format(placeholder), (planted, out)
            assert counts[kind] == 1 and sum(counts.values()) == 1, (planted, counts)


def test_card_is_not_a_phone():
    for card in PII["card"]:
        assert scrub_text(f"charged to {card} twice") == "charged to [card] twice"


def test_several_kinds_in_one_line(plain_lines):
    line = f"{plain_lines[0]} Mail a.b@c.com or call 555-123-4567, card 4111 1111 1111 1111, see www.x.com/y."
    out, counts = scrub_text_counted(line)
    assert out == f"{plain_lines[0]} Mail [email] or call [phone], card [card], see [url]."
    assert counts == {"url": 1, "email": 1, "card": 1, "phone": 1}


@pytest.mark.parametrize("text", NOT_PII)
def test_ordinary_content_unchanged(text, plain_lines):
    assert scrub_text(text) == text
    embedded = f"{plain_lines[1]} {text} {plain_lines[2]}"
    assert scrub_text(embedded) == embedded


def test_scrub_texts_mixed():
    stats = ScrubStats()
    values = [None, float("nan"), "", "Great gift card", "call 555-123-4567", 42, "see https://a.com/x", "5 stars"]
    out = scrub_texts(values, stats)
    assert out == ["", "", "", "Great gift card", "call [phone]", "42", "see [url]", "5 stars"]
    assert stats.as_dict() == {"texts": 8, "changed": 2, "url": 1, "email": 0, "card": 0, "phone": 1}
    assert scrub_texts(iter(["a@b.com"])) == ["[email]"]
    assert scrub_text(None) == "" and scrub_text(math.nan) == ""
