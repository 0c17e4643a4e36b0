"""The reviewers'-words query set of bench.search_relevance_reviews, built from the real Magazine_Subscriptions
files, the parts of prefmine.search it relies on: the description as an opt-in lexical field (SearchConfig's
`lexical_fields`, saved with the index and used for items added later) and the paired bootstrap interval, and the
benchmark itself in a smaller setting: hybrid search beats each of its parts (issue 25)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bench.search_relevance_reviews import (
    WORD,
    _forms,
    files,
    labelled_queries,
    load_catalogue,
    load_reviews,
    main,
    own_words,
    split_users,
)
from prefmine.search import SearchConfig, Searcher
from prefmine.search.catalog import Catalog
from prefmine.search.engine import save_index
from prefmine.search.lexical import LexicalIndex
from prefmine.search.tune import paired_bootstrap

CATEGORY = "Magazine_Subscriptions"


@pytest.fixture(scope="module")
def magazine(raw_dir):
    paths = files(raw_dir, CATEGORY)
    return load_catalogue(paths["metadata"]), load_reviews(paths["reviews"])


def test_queries_keep_the_items_own_words_out_and_split_users(magazine):
    """Every query has at least two words, none a stop word, none a word (in any compared form) of its item's
    title, brand or capitalised description words; Amazon's "N Stars" placeholders never become queries; the
    validation and test users are disjoint and together hold every query."""
    from bm25s.stopwords import STOPWORDS_EN

    items, reviews = magazine
    assert len(items) == 2320 and items["item"].is_unique  # duplicate asin rows dropped
    queries = labelled_queries(items, reviews)
    assert 0.7 * len(reviews) < len(queries) <= len(reviews)
    for q in queries:
        i = q["item"]
        own = own_words(items["title"][i], items["brand"][i], items["categories"][i], items["description"][i])
        words = WORD.findall(q["query"])
        assert len(words) >= 2 and len(words) == len(q["query"].split()), q
        assert not any(_forms(w) & own for w in words), (q, items["title"][i], items["brand"][i])
        assert not {w.casefold() for w in words} & set(STOPWORDS_EN)
        assert q["query"].casefold() not in {"five stars", "four stars", "three stars", "two stars", "one star"}
        assert i not in q["history"]
    valid, test = split_users(queries, 0.4, 2020)
    assert not {q["user"] for q in valid} & {q["user"] for q in test}
    assert len(valid) + len(test) == len(queries) and 0.25 < len(valid) / len(queries) < 0.55
    again = split_users(queries, 0.4, 2020)
    assert [q["query"] for q in again[1]] == [q["query"] for q in test]
    # a stand-in title (brand + leaf category, for the empty HTML titles) names nothing: its category stays allowed
    stand_ins = [j for j in range(len(items)) if items["categories"][j]
                 and items["title"][j] == f"{items['brand'][j]} {items['categories'][j][-1]}".strip()]
    assert len(stand_ins) > 1000
    i = next(j for j in stand_ins if not _forms(WORD.findall(items["categories"][j][-1])[0])
             & {f for w in WORD.findall(items["brand"][j]) for f in _forms(w)})
    leaf = WORD.findall(items["categories"][i][-1])[0]
    assert not _forms(leaf) & own_words(items["title"][i], items["brand"][i], items["categories"][i], "", "title_brand")
    assert _forms(leaf) <= own_words(items["title"][i], items["brand"][i], [], "", "title_brand")  # a real title


def test_the_description_is_an_opt_in_lexical_field_saved_with_the_index(magazine, tmp_path):
    """With the default fields BM25 cannot match a word only an item's description holds; with `lexical_fields`
    including the description (saved in the index's config) it finds that item, and so does the side index of
    items added later."""
    items, _ = magazine
    catalog = Catalog.from_items(items)
    names = " ".join(catalog.index_texts()).casefold()
    # a capitalised description word no item's title, brand or category holds, in few descriptions
    word, item = next((w, i) for i, d in enumerate(catalog.descriptions) for w in WORD.findall(d)[:1]
                      if len(w) > 4 and w[0].isupper() and w.casefold() not in names
                      and sum(w.casefold() in x.casefold() for x in catalog.descriptions) <= 3)
    plain = LexicalIndex.load(save_index(tmp_path / "names", catalog))
    assert not plain.scores(word).any()
    cfg = SearchConfig(lexical_fields=["description", "title"])  # any order, kept in LEXICAL_FIELDS order
    assert cfg.lexical_fields == ("title", "description")
    d = save_index(tmp_path / "desc", catalog, SearchConfig(lexical_fields=("title", "brand", "categories",
                                                                            "description")))
    searcher = Searcher.load(d, catalog, np.eye(len(catalog), 8, dtype=np.float32) + 1e-3)
    assert searcher.config.lexical_fields[-1] == "description"
    s = searcher.lexical.scores(word)
    assert s[item] > 0 and int(np.sum(s > s[item])) < 3
    more = searcher.extended(Catalog.from_items(items.iloc[[item]]), np.ones((1, 8), dtype=np.float32))
    assert more.lexical.scores(word)[len(catalog)] > 0
    with pytest.raises(ValueError, match="lexical_fields"):
        SearchConfig(lexical_fields=("title", "reviews"))
    with pytest.raises(ValueError, match="descriptions"):
        Catalog(["a"], [""], [[]], np.array([np.nan]), np.array([True]), [""], ["x", "y"])


def test_paired_bootstrap_interval():
    """A constant improvement gives a degenerate interval at that value; noise around zero gives an interval that
    holds zero; resampling users counts users, not queries."""
    rng = np.random.default_rng(0)
    b = rng.random(500)
    flat = paired_bootstrap(b + 0.1, b, 500, seed=1)
    assert flat["low"] == pytest.approx(0.1) and flat["high"] == pytest.approx(0.1) and flat["units"] == 500
    noise = paired_bootstrap(b + rng.normal(0, 0.1, 500), b, 1000, seed=1)
    assert noise["low"] < 0 < noise["high"]
    users = np.repeat(np.arange(50), 10)
    grouped = paired_bootstrap(b + rng.normal(0.05, 0.1, 500), b, 1000, seed=1, groups=users)
    assert grouped["units"] == 50 and grouped["low"] < grouped["mean_diff"] < grouped["high"]
    assert paired_bootstrap(b, b[::-1], 200, seed=3) == paired_bootstrap(b, b[::-1], 200, seed=3)
    with pytest.raises(ValueError):
        paired_bootstrap(b, b[:10])


# The benchmark's setting for the suite: the text choices the full run made on validation (BM25 over the names and
# the description, the dense side on the full item text; bench/results/search_relevance_reviews_title_brand.md),
# every reviewed item (151) with distractors sampled from the rest of the catalogue (embedding all 2,320 item texts
# with MiniLM is most of the full run's time), every query (fewer left the intervals across 0), 1,000 resamples.
# Margins across seeds and the time it takes: bench/README.md, "In the shoppers' words".
SUITE_SETTING = ["--category", CATEGORY, "--name-words", "title_brand", "--lexical-text", "description",
                 "--dense-text", "full", "--catalogue-items", "600", "--boot", "1000", "--seed", "2020"]


@pytest.mark.slow
def test_hybrid_search_beats_each_of_its_parts_on_the_relevance_benchmark(raw_dir, tmp_path):
    """bench.search_relevance_reviews in process (real Magazine files, real MiniLM vectors, real bm25s index, the
    served Searcher.retrieve and fusion, the weights chosen on validation users): on the test users, hybrid NDCG@10
    beats BM25 alone and dense alone, each by a paired bootstrap 95% interval wholly above 0, over queries and over
    users. With the lexical weight forced to 0 (hybrid = dense) or 1 (BM25 ordering the pooled items) it fails.
    Run through the command line's `main`, so it also checks what a run writes: the JSON and the rendered table."""
    out = tmp_path / "reviews.json"
    assert main([*SUITE_SETTING, "--raw", str(raw_dir), "--cache", str(tmp_path / "cache"), "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert "| hybrid |" in out.with_suffix(".md").read_text()
    ls, models = report["labelled_set"], report["models"]
    assert report["catalogue_items"] == 600 and ls["name_words"] == "title_brand"
    assert report["texts"]["chosen"] == "lexical description, dense full"
    assert ls["test_queries"] > 1000 and ls["test_users"] > 150  # the whole labelled set, not a sample of it
    print({n: round(m["NDCG@10"], 4) for n, m in models.items()}, models["hybrid"]["fusion"],
          models["hybrid"]["lexical_weight"], report["seconds"])
    for part in ("lexical (BM25)", "dense (MiniLM)"):
        d = report["ndcg10_differences"][f"hybrid - {part}"]
        print(part, {k: (round(v["low"], 4), round(v["high"], 4)) for k, v in d.items()})
        assert models["hybrid"]["NDCG@10"] > models[part]["NDCG@10"], part
        assert d["over queries"]["low"] > 0 and d["over users"]["low"] > 0, (part, d)
