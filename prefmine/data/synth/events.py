"""The behaviour model: the events of a batch of planned sessions, as an Arrow table in the events schema.

Per session it lays out the funnel (which views were clicked, carted, bought and rated), picks the viewed items,
spaces the events in time, draws ratings from item quality and user bias, and writes review text for rated items.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from prefmine.data.synth.config import SynthConfig
from prefmine.data.synth.schema import (
    BUY,
    CART,
    EVENT_TYPES,
    EVENTS_SCHEMA,
    RATE,
    START_TS,
    id_array,
    id_width,
)
from prefmine.data.synth.sessions import Plan
from prefmine.data.synth.vocabulary import (
    CATEGORY_TREE,
    CLOSINGS,
    DETAILS,
    NOUNS,
    OPENINGS,
    TITLES,
    WORDS,
)
from prefmine.data.synth.world import World, grouped_cumsum, sample_cats, sample_items

_RATING_BASE_P = np.array([0.07, 0.05, 0.09, 0.21, 0.58])  # Amazon-like J shape
_GAP_MEDIAN_S = np.array([30.0, 8.0, 20.0, 60.0, 120.0])  # seconds before a view/click/cart/buy/rate


def _ratings(quality: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """1..5 from a J-shaped base distribution tilted by (item quality + user bias)."""
    logits = np.log(_RATING_BASE_P)[None, :] + 0.35 * quality[:, None] * np.arange(-2, 3)[None, :]
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    cdf = np.cumsum(p / p.sum(axis=1, keepdims=True), axis=1)
    return 1 + (rng.random(len(quality))[:, None] >= cdf[:, :-1]).sum(axis=1)


def _reviews(ratings: np.ndarray, items: np.ndarray, world: World, rng: np.random.Generator):
    """Review titles and texts from templates filled with the item's category words and rating sentiment."""
    n = len(ratings)
    sentiment = np.where(ratings <= 2, 0, np.where(ratings == 3, 1, 2))
    picks = rng.integers(0, 1 << 30, size=(n, 7))
    with_detail = rng.random(n) < 0.6
    titles, texts = [], []
    for i in range(n):
        s, noun = int(sentiment[i]), NOUNS[world.item_noun[items[i]]]
        path, _, attrs, use = CATEGORY_TREE[world.item_cat[items[i]]]
        r = picks[i]
        fill = {
            "noun": noun,
            "attr": attrs[r[0] % len(attrs)],
            "use": use,
            "word": WORDS[s][r[1] % len(WORDS[s])],
            "dept": path.split(" > ")[-1].lower(),
        }
        titles.append(TITLES[s][r[2] % len(TITLES[s])].format(**fill))
        sentences = [OPENINGS[s][r[3] % len(OPENINGS[s])]]
        if with_detail[i]:
            fill["word"] = WORDS[s][r[4] % len(WORDS[s])]
            sentences.append(DETAILS[s][r[5] % len(DETAILS[s])])
        sentences.append(CLOSINGS[s][r[6] % len(CLOSINGS[s])])
        texts.append(" ".join(x.format(**fill) for x in sentences))
    return titles, texts


def _funnel_events(funnel: np.ndarray, cfg: SynthConfig, rng: np.random.Generator):
    """(view index, event type) per event, in session order: browse (view/click/cart per view), buys, rates."""
    views = funnel[:, 0]
    view_sess = np.repeat(np.arange(len(funnel)), views)
    view_pos = np.arange(len(view_sess)) - np.repeat(np.cumsum(views) - views, views)
    rank = np.empty(len(view_sess), np.int64)  # a random order of the session's views: nested funnel subsets
    rank[np.lexsort((rng.random(len(view_sess)), view_sess))] = view_pos
    depth = sum((rank < funnel[view_sess, k]).astype(np.int64) for k in range(1, 5))  # 0 view .. 4 rated
    n_browse = 1 + np.minimum(depth, 2)
    browse_view = np.repeat(np.arange(len(view_sess)), n_browse)
    browse_type = np.arange(len(browse_view)) - np.repeat(np.cumsum(n_browse) - n_browse, n_browse)
    bought, rated = np.flatnonzero(depth >= 3), np.flatnonzero(depth == 4)
    ev_view = np.concatenate([browse_view, bought, rated])
    ev_type = np.concatenate([browse_type, np.full(len(bought), BUY), np.full(len(rated), RATE)])
    phase = np.maximum(ev_type - CART, 0)  # browse 0, buy 1, rate 2
    key = ((view_sess[ev_view] * 3 + phase) * (cfg.max_views + 1) + view_pos[ev_view]) * 5 + ev_type
    order = np.argsort(key, kind="stable")
    return view_sess, ev_view[order], ev_type[order].astype(np.int8)


def _timestamps(sess: np.ndarray, pos: np.ndarray, ev_type: np.ndarray, plan: Plan, lo: int, hi: int,
                rng: np.random.Generator) -> np.ndarray:
    """Strictly increasing within a session (1-900 s apart) and ending before the user's next session starts."""
    gap = np.rint(_GAP_MEDIAN_S[ev_type] * np.exp(rng.normal(0.0, 0.8, len(ev_type))))
    gap = np.clip(gap, 1, 900).astype(np.int64)
    gap[pos == 0] = 0
    start = plan.start[lo:hi][sess]
    ts = start + grouped_cumsum(gap, np.arange(len(pos)) - pos)
    # A session that would run into the next one is squeezed to 1 s steps at its end: min of two strictly
    # increasing sequences, so order is kept and no (user, item, timestamp, event_type) repeats.
    latest = start + plan.room[lo:hi][sess] - plan.keep[lo:hi][sess] + pos
    return np.maximum(np.minimum(ts, latest), START_TS)  # (the floor only matters for absurdly dense users)


def event_batch(plan: Plan, lo: int, hi: int, world: World, cfg: SynthConfig, rng):
    """Events of sessions lo..hi as a table, plus their event type codes and item indices."""
    funnel = plan.funnel[lo:hi]
    view_sess, ev_view, ev_type = _funnel_events(funnel, cfg, rng)
    view_cat = plan.cat[lo:hi][view_sess]
    stray = rng.random(len(view_cat)) < cfg.stray
    view_cat[stray] = sample_cats(world, int(stray.sum()), rng)
    view_item = sample_items(world, view_cat, rng)

    sess = view_sess[ev_view]
    lengths = funnel.sum(axis=1)
    pos = np.arange(len(sess)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    kept = pos < plan.keep[lo:hi][sess]
    sess, pos, ev_type, item = sess[kept], pos[kept], ev_type[kept], view_item[ev_view[kept]]
    user = plan.user[lo:hi][sess]
    ts = _timestamps(sess, pos, ev_type, plan, lo, hi, rng)

    is_rate = np.flatnonzero(ev_type == RATE)
    rating = np.zeros(len(sess), np.float32)
    rates = _ratings(world.item_quality[item[is_rate]] + world.user_bias[user[is_rate]], rng)
    rating[is_rate] = rates
    rate_mask = np.zeros(len(sess), bool)
    rate_mask[is_rate] = True
    reviewed = is_rate[rng.random(len(is_rate)) < cfg.review_prob]
    titles, texts = _reviews(rating[reviewed].astype(int), item[reviewed], world, rng)
    review_idx = np.full(len(sess), -1, np.int64)
    review_idx[reviewed] = np.arange(len(reviewed))
    review_take = pa.array(review_idx, mask=review_idx < 0)
    columns = [
        id_array("u", user, id_width(cfg.users, 7)),
        id_array("i", item, id_width(cfg.items, 6)),
        pa.array(ts, pa.int64()),
        pc.take(pa.array(EVENT_TYPES, pa.string()), pa.array(ev_type.astype(np.int32))),
        pa.array(rating, pa.float32(), mask=~rate_mask),
        pc.take(pa.array(titles, pa.string()), review_take),
        pc.take(pa.array(texts, pa.string()), review_take),
    ]
    return pa.Table.from_arrays(columns, schema=EVENTS_SCHEMA), ev_type, item
