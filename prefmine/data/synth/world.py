"""The synthetic world: category popularity, items (category, noun, quality, within-category Zipf rank) and
users (activity, preferred categories, rating bias), with the samplers the later steps draw from.

Drawn once per log from its own random stream, so the plan and the events can be regenerated around it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from prefmine.data.synth.config import SynthConfig
from prefmine.data.synth.vocabulary import CATEGORY_TREE, NOUN_COUNT, NOUN_OFFSET


@dataclass
class World:
    cat_p: np.ndarray  # category popularity, sums to 1
    cat_keys: np.ndarray  # category + within-category popularity CDF, aligned with cat_items
    cat_items: np.ndarray  # item indices grouped by category, most popular first
    item_cat: np.ndarray
    item_noun: np.ndarray  # index into NOUNS
    item_quality: np.ndarray
    user_p: np.ndarray  # per-user activity CDF
    user_prefs: np.ndarray  # (users, prefs_per_user) categories
    user_pref_cdf: np.ndarray  # (users, prefs_per_user)
    user_bias: np.ndarray


def grouped_cumsum(values: np.ndarray, group_start: np.ndarray) -> np.ndarray:
    """Inclusive cumulative sum within contiguous groups; group_start[i] is the index where i's group begins."""
    cs = np.cumsum(values)
    return cs - cs[group_start] + values[group_start]


def sample_cdf(cdf: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    return np.minimum(np.searchsorted(cdf, rng.random(n), side="right"), len(cdf) - 1)


def build_world(cfg: SynthConfig, rng: np.random.Generator) -> World:
    n_cats = min(len(CATEGORY_TREE), cfg.items)
    cat_p = rng.dirichlet(np.full(n_cats, 1.5))
    # Every category gets an item, the rest follow popularity; then items are shuffled so ids say nothing.
    item_cat = np.concatenate([np.arange(n_cats), sample_cdf(np.cumsum(cat_p), cfg.items - n_cats, rng)])
    item_cat = rng.permutation(item_cat).astype(np.int32)
    cat_items = np.lexsort((rng.random(cfg.items), item_cat)).astype(np.int32)  # by category, random rank within
    sorted_cat = item_cat[cat_items]
    first = np.searchsorted(sorted_cat, sorted_cat, side="left")
    rank = np.arange(cfg.items) - first
    weight = (rank + 1.0) ** -cfg.zipf_a
    cum = grouped_cumsum(weight, first)
    last = np.searchsorted(sorted_cat, sorted_cat, side="right") - 1
    cat_keys = sorted_cat + cum / cum[last]

    prefs = sample_cdf(np.cumsum(cat_p), cfg.users * cfg.prefs_per_user, rng).reshape(cfg.users, -1)
    pref_w = rng.dirichlet(np.full(cfg.prefs_per_user, cfg.pref_alpha), size=cfg.users)
    activity = rng.lognormal(0.0, cfg.activity_sigma, cfg.users)
    return World(
        cat_p=cat_p,
        cat_keys=cat_keys,
        cat_items=cat_items,
        item_cat=item_cat,
        item_noun=(NOUN_OFFSET[item_cat] + (rng.random(cfg.items) * NOUN_COUNT[item_cat]).astype(int)),
        item_quality=rng.normal(0.0, 1.0, cfg.items).astype(np.float32),
        user_p=np.cumsum(activity) / activity.sum(),
        user_prefs=prefs.astype(np.int16),
        user_pref_cdf=np.cumsum(pref_w, axis=1),
        user_bias=rng.normal(0.0, 0.5, cfg.users).astype(np.float32),
    )


def sample_items(world: World, cats: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Items drawn by within-category Zipf popularity, one per entry of `cats`."""
    idx = np.searchsorted(world.cat_keys, cats + rng.random(len(cats)), side="right")
    return world.cat_items[np.minimum(idx, len(world.cat_items) - 1)]


def sample_cats(world: World, n: int, rng: np.random.Generator) -> np.ndarray:
    return sample_cdf(np.cumsum(world.cat_p), n, rng)
