"""Synthetic platform event log for scale tests (`prefmine data synth`).

Real review dumps top out at a few million rows and carry no views, clicks or carts, so scale tests and the
`events` source reader need a platform-shaped log of any size. `synth(out, SynthConfig(...))` writes:

    out/events/part-00000.parquet ...   at most `events_per_part` rows each (or part-00000.csv with a header)
        user_id string, item_id string, timestamp int64 (Unix s, 2019-01-01 .. 2024-01-01), event_type string
        (view/click/cart/buy/rate), rating float32 (rate only), review_title string, review_text string
    out/items.parquet (or items.csv)    item_id, title, description, brand, categories ("A > B > C")
    out/synth.json                      settings and realised counts

The shape is meant to be realistic enough for model tests: ~40 categories in a 2-3 level tree with category
vocabularies behind item titles, descriptions and reviews; Zipf item popularity within a category; users with a
few Dirichlet-weighted preferred categories and heavy-tailed activity; sessions as short bursts (seconds to
minutes between events, days between a user's sessions) with a view -> click -> cart -> buy -> rate funnel in
which buy and rate refer to the item that was carted; ratings skewed to 4-5 and driven by item quality, with
review text whose words follow the category and the rating.

Everything is vectorised with numpy: a session plan (a few arrays per session) is drawn first, then events are
generated for fixed batches of sessions and written one part at a time, so memory stays bounded by a part and a
batch. The output is built in a temporary sibling directory and renamed into place at the end. The same config
(seed included) gives the same files; `events_per_part` and `fmt` only change how they are cut and encoded.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from dataclasses import asdict, dataclass
from numbers import Integral, Real
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

START_TS = 1546300800  # 2019-01-01T00:00:00Z
END_TS = 1704067200  # 2024-01-01T00:00:00Z (exclusive)
EVENT_TYPES = ("view", "click", "cart", "buy", "rate")
VIEW, CLICK, CART, BUY, RATE = range(5)

EVENTS_SCHEMA = pa.schema(
    [
        ("user_id", pa.string()),
        ("item_id", pa.string()),
        ("timestamp", pa.int64()),
        ("event_type", pa.string()),
        ("rating", pa.float32()),
        ("review_title", pa.string()),
        ("review_text", pa.string()),
    ]
)
ITEMS_SCHEMA = pa.schema(
    [(name, pa.string()) for name in ("item_id", "title", "description", "brand", "categories")]
)

# Leaf category path, nouns, attributes, a usage phrase. Departments and mid levels come from the paths.
CATEGORY_TREE: tuple[tuple[str, tuple[str, ...], tuple[str, ...], str], ...] = (
    ("Home > Kitchen > Knives", ("chef knife", "paring knife", "knife block", "santoku knife", "bread knife",
                                 "steak knife set"), ("forged", "stainless", "razor-sharp", "ergonomic"),
     "for slicing and dicing"),
    ("Home > Kitchen > Cookware", ("skillet", "saucepan", "dutch oven", "wok", "stock pot"),
     ("nonstick", "cast iron", "induction-ready", "enameled"), "for everyday cooking"),
    ("Home > Kitchen > Small Appliances", ("blender", "toaster", "coffee maker", "air fryer", "electric kettle"),
     ("programmable", "compact", "high-speed", "quiet"), "on the kitchen counter"),
    ("Home > Bedding", ("duvet cover", "pillowcase", "sheet set", "comforter", "mattress topper"),
     ("cotton", "breathable", "hypoallergenic", "soft"), "for a good night's sleep"),
    ("Home > Furniture", ("bookshelf", "side table", "desk", "nightstand", "shoe rack"),
     ("solid wood", "modern", "rustic", "space-saving"), "in the living room"),
    ("Home > Lighting", ("desk lamp", "floor lamp", "LED bulb", "light string"),
     ("dimmable", "warm white", "energy-efficient", "bright"), "to light up the room"),
    ("Electronics > Audio > Headphones", ("headphone set", "earbud set", "gaming headset"),
     ("wireless", "noise-cancelling", "over-ear", "bluetooth"), "for music and calls"),
    ("Electronics > Audio > Speakers", ("speaker", "soundbar", "subwoofer", "smart speaker"),
     ("portable", "waterproof", "bass-heavy", "loud"), "for parties and movies"),
    ("Electronics > Computers > Laptops", ("laptop", "notebook", "chromebook", "ultrabook"),
     ("lightweight", "fast", "slim", "long-battery"), "for work and school"),
    ("Electronics > Computers > Accessories", ("keyboard", "mouse", "USB hub", "monitor stand", "webcam"),
     ("mechanical", "ergonomic", "plug-and-play", "wireless"), "at my desk"),
    ("Electronics > Phones > Cases", ("phone case", "screen protector", "wallet case"),
     ("shockproof", "slim", "tempered glass", "grippy"), "to protect my phone"),
    ("Electronics > Phones > Chargers", ("charger", "charging cable", "power bank", "wireless charger"),
     ("fast-charging", "braided", "USB-C", "compact"), "to keep my phone charged"),
    ("Electronics > Cameras", ("camera", "camera lens", "tripod", "memory card"),
     ("mirrorless", "zoom", "sharp", "stabilised"), "for travel photos"),
    ("Beauty > Skin Care", ("moisturizer", "face serum", "cleanser", "sunscreen", "face mask"),
     ("hydrating", "fragrance-free", "gentle", "non-greasy"), "in my skincare routine"),
    ("Beauty > Hair Care", ("shampoo", "conditioner", "hair oil", "hair dryer"),
     ("sulfate-free", "nourishing", "volumizing", "frizz-free"), "for my curly hair"),
    ("Beauty > Makeup", ("lipstick", "mascara", "foundation", "eyeliner"),
     ("long-lasting", "matte", "smudge-proof", "buildable"), "for everyday makeup"),
    ("Beauty > Fragrance", ("perfume", "cologne", "body mist"), ("floral", "woody", "fresh", "citrus"),
     "for date nights"),
    ("Sports > Fitness > Yoga", ("yoga mat", "yoga block", "resistance band", "foam roller"),
     ("non-slip", "thick", "eco-friendly", "cushioned"), "for my workouts"),
    ("Sports > Fitness > Weights", ("dumbbell set", "kettlebell", "barbell", "weight plate"),
     ("adjustable", "rubber-coated", "heavy-duty", "knurled"), "for home strength training"),
    ("Sports > Outdoors > Camping", ("tent", "sleeping bag", "camping stove", "lantern"),
     ("lightweight", "waterproof", "four-season", "packable"), "on camping trips"),
    ("Sports > Outdoors > Hiking", ("hiking boot", "daypack", "trekking pole", "water bottle"),
     ("durable", "breathable", "insulated", "rugged"), "on long hikes"),
    ("Sports > Cycling", ("bike helmet", "bike light", "bike lock", "bike saddle"),
     ("aerodynamic", "bright", "sturdy", "padded"), "on my commute"),
    ("Books > Fiction > Mystery", ("mystery novel", "thriller", "detective story"),
     ("gripping", "suspenseful", "twisty", "dark"), "on a rainy weekend"),
    ("Books > Fiction > Science Fiction", ("space opera", "sci-fi novel", "short story anthology"),
     ("imaginative", "epic", "thought-provoking", "futuristic"), "before bed"),
    ("Books > Nonfiction > Cooking", ("cookbook", "baking book", "recipe collection"),
     ("illustrated", "easy-to-follow", "vegetarian", "seasonal"), "for weeknight dinners"),
    ("Books > Nonfiction > History", ("biography", "history book", "memoir"),
     ("well-researched", "detailed", "readable", "balanced"), "for my book club"),
    ("Books > Children's Books", ("picture book", "bedtime story", "activity book"),
     ("colorful", "charming", "funny", "educational"), "with my kids"),
    ("Toys > Building Toys", ("building set", "construction kit", "magnetic tile set"),
     ("creative", "STEM", "colorful", "sturdy"), "for my son"),
    ("Toys > Board Games", ("board game", "card game", "jigsaw puzzle"),
     ("strategic", "family-friendly", "replayable", "fast-paced"), "on game night"),
    ("Toys > Action Figures", ("action figure", "doll", "playset"),
     ("poseable", "collectible", "detailed", "durable"), "for my daughter"),
    ("Clothing > Men > Shirts", ("dress shirt", "polo shirt", "t-shirt", "flannel shirt"),
     ("slim-fit", "cotton", "wrinkle-free", "soft"), "for the office"),
    ("Clothing > Women > Dresses", ("maxi dress", "sundress", "wrap dress", "cocktail dress"),
     ("flowy", "elegant", "stretchy", "lined"), "for summer weddings"),
    ("Clothing > Shoes > Running Shoes", ("running shoe", "trail runner", "sneaker"),
     ("cushioned", "lightweight", "supportive", "grippy"), "for my morning runs"),
    ("Clothing > Accessories > Watches", ("watch", "smartwatch", "watch band"),
     ("stainless", "water-resistant", "classic", "minimalist"), "every day"),
    ("Grocery > Coffee & Tea", ("coffee bean blend", "ground coffee", "green tea", "tea sampler"),
     ("organic", "bold", "smooth", "fair-trade"), "with breakfast"),
    ("Grocery > Snacks", ("granola bar", "trail mix", "potato chip bag", "cookie tin"),
     ("crunchy", "healthy", "sweet", "salty"), "as an afternoon snack"),
    ("Pet Supplies > Dogs", ("dog bed", "dog leash", "chew toy", "dog food"),
     ("durable", "orthopedic", "grain-free", "reflective"), "for my dog"),
    ("Pet Supplies > Cats", ("cat tree", "litter box", "cat toy", "scratching post"),
     ("sturdy", "odor-control", "interactive", "compact"), "for my cats"),
)

_BRAND_HEADS = ("Nor", "Alt", "Bel", "Cor", "Dav", "Eko", "Fen", "Gal", "Hal", "Ivo", "Kal", "Lum", "Mar", "Nex",
                "Orb", "Pax", "Quin", "Rav", "Sol", "Tor", "Ul", "Vel", "Wex", "Zan")
_BRAND_TAILS = ("vik", "ura", "ion", "ex", "ora", "ano", "eth", "ix", "ona", "ard")
_BRANDS_PER_DEPT = 10
_VARIANTS = ("", "", "", " Pro", " Plus", " Classic", " Deluxe", " Mini", " II", " Essentials")

# Review text by sentiment (0: ratings 1-2, 1: rating 3, 2: ratings 4-5).
_WORDS = {
    0: ("flimsy", "disappointing", "poorly made", "cheap", "defective", "useless"),
    1: ("okay", "decent", "average", "fine", "acceptable"),
    2: ("excellent", "great", "fantastic", "sturdy", "perfect", "reliable", "well made"),
}
_TITLES = {
    0: ("Disappointed with this {noun}", "Poor quality {noun}", "Not worth it", "Returned this {noun}",
        "Broke after a week", "Do not buy this {noun}"),
    1: ("Decent {noun}", "It's okay", "Average {noun} for the price", "Does the job, mostly",
        "Mixed feelings about this {noun}"),
    2: ("Love this {noun}", "Excellent {noun}", "Great {attr} {noun}", "Exactly what I needed",
        "Highly recommend this {noun}", "Best {noun} I have owned"),
}
_OPENINGS = {
    0: ("I bought this {noun} {use} but it was {word}.", "This {noun} is {word} and not {attr} at all.",
        "Sadly the {noun} turned out {word}."),
    1: ("This {noun} is {word}; it works {use} but nothing special.", "I bought this {noun} {use} and it is {word}."),
    2: ("I bought this {noun} {use} and it is {word}.", "This {noun} is {word} and really {attr}.",
        "Really happy with this {noun}: {word} from day one."),
}
_DETAILS = {
    0: ("The {attr} claim is misleading.", "Worst {dept} purchase I have made.",
        "It stopped working {use} within days."),
    1: ("The {attr} design is fine but could be better.", "Typical {dept} quality for the price."),
    2: ("The {attr} design feels {word}.", "Great value for a {dept} purchase.", "Works perfectly {use}."),
}
_CLOSINGS = {
    0: ("I returned it.", "Would not recommend.", "Save your money."),
    1: ("Might buy again on sale.", "Three stars is fair."),
    2: ("Would buy again.", "Highly recommended.", "Makes a great gift too."),
}
_RATING_BASE_P = np.array([0.07, 0.05, 0.09, 0.21, 0.58])  # Amazon-like J shape
_GAP_MEDIAN_S = np.array([30.0, 8.0, 20.0, 60.0, 120.0])  # seconds before a view/click/cart/buy/rate
_MIN_SESSION_GAP_S = 6 * 3600
_SESSION_BATCH = 50_000  # sessions per generation batch (fixed, so output does not depend on events_per_part)
_ITEM_CHUNK = 250_000


@dataclass
class SynthConfig:
    users: int
    items: int
    events: int
    seed: int = 0
    events_per_part: int = 1_000_000
    fmt: str = "parquet"  # parquet | csv
    zipf_a: float = 1.1  # item popularity exponent within a category
    prefs_per_user: int = 3  # preferred categories per user
    pref_alpha: float = 0.5  # Dirichlet concentration of a user's preference weights
    explore: float = 0.1  # share of sessions in a category drawn from global popularity
    stray: float = 0.1  # share of views outside the session's category
    activity_sigma: float = 1.5  # lognormal sigma of per-user activity (heavy tail)
    mean_views: float = 6.0  # geometric mean of views per session
    max_views: int = 200
    p_click: float = 0.4  # per view
    p_cart: float = 0.15  # per click
    p_buy: float = 0.45  # per cart
    p_rate: float = 0.3  # per buy
    review_prob: float = 0.85  # share of rate events with a review title and text

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        for name in ("users", "items", "events", "events_per_part", "prefs_per_user", "max_views"):
            _check_int(name, getattr(self, name), 1)
        _check_int("seed", self.seed, 0)
        if self.fmt not in ("parquet", "csv"):
            raise ValueError(f"fmt must be 'parquet' or 'csv', got {self.fmt!r}")
        for name in ("zipf_a", "pref_alpha", "activity_sigma", "mean_views"):
            _check_real(name, getattr(self, name), 0.0, None, low_open=name != "activity_sigma")
        if self.mean_views < 1:
            raise ValueError(f"mean_views must be >= 1, got {self.mean_views}")
        for name in ("explore", "stray", "p_click", "p_cart", "p_buy", "p_rate", "review_prob"):
            _check_real(name, getattr(self, name), 0.0, 1.0)


def _check_int(name: str, value, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _check_real(name: str, value, low: float, high: float | None, low_open: bool = False) -> None:
    ok = isinstance(value, Real) and not isinstance(value, bool) and np.isfinite(value)
    ok = ok and (value > low if low_open else value >= low) and (high is None or value <= high)
    if not ok:
        bounds = f"{'>' if low_open else '>='} {low}" + ("" if high is None else f" and <= {high}")
        raise ValueError(f"{name} must be a number {bounds}, got {value!r}")


# ---------------------------------------------------------------------------------------------------- world


@dataclass
class _World:
    cat_p: np.ndarray  # category popularity, sums to 1
    cat_keys: np.ndarray  # category + within-category popularity CDF, aligned with cat_items
    cat_items: np.ndarray  # item indices grouped by category, most popular first
    item_cat: np.ndarray
    item_noun: np.ndarray  # index into _NOUNS
    item_quality: np.ndarray
    user_p: np.ndarray  # per-user activity CDF
    user_prefs: np.ndarray  # (users, prefs_per_user) categories
    user_pref_cdf: np.ndarray  # (users, prefs_per_user)
    user_bias: np.ndarray


_NOUNS = [noun for _, nouns, _, _ in CATEGORY_TREE for noun in nouns]
_NOUN_OFFSET = np.cumsum([0] + [len(nouns) for _, nouns, _, _ in CATEGORY_TREE])[:-1]
_NOUN_COUNT = np.array([len(nouns) for _, nouns, _, _ in CATEGORY_TREE])
_DEPTS = sorted({path.split(" > ")[0] for path, *_ in CATEGORY_TREE})
_CAT_DEPT = np.array([_DEPTS.index(path.split(" > ")[0]) for path, *_ in CATEGORY_TREE])


def _cap(s: str) -> str:
    return " ".join(w[:1].upper() + w[1:] for w in s.split(" "))


def _grouped_cumsum(values: np.ndarray, group_start: np.ndarray) -> np.ndarray:
    """Inclusive cumulative sum within contiguous groups; group_start[i] is the index where i's group begins."""
    cs = np.cumsum(values)
    return cs - cs[group_start] + values[group_start]


def _sample_cdf(cdf: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    return np.minimum(np.searchsorted(cdf, rng.random(n), side="right"), len(cdf) - 1)


def _build_world(cfg: SynthConfig, rng: np.random.Generator) -> _World:
    n_cats = min(len(CATEGORY_TREE), cfg.items)
    cat_p = rng.dirichlet(np.full(n_cats, 1.5))
    # Every category gets an item, the rest follow popularity; then items are shuffled so ids say nothing.
    item_cat = np.concatenate([np.arange(n_cats), _sample_cdf(np.cumsum(cat_p), cfg.items - n_cats, rng)])
    item_cat = rng.permutation(item_cat).astype(np.int32)
    cat_items = np.lexsort((rng.random(cfg.items), item_cat)).astype(np.int32)  # by category, random rank within
    sorted_cat = item_cat[cat_items]
    first = np.searchsorted(sorted_cat, sorted_cat, side="left")
    rank = np.arange(cfg.items) - first
    weight = (rank + 1.0) ** -cfg.zipf_a
    cum = _grouped_cumsum(weight, first)
    last = np.searchsorted(sorted_cat, sorted_cat, side="right") - 1
    cat_keys = sorted_cat + cum / cum[last]

    prefs = _sample_cdf(np.cumsum(cat_p), cfg.users * cfg.prefs_per_user, rng).reshape(cfg.users, -1)
    pref_w = rng.dirichlet(np.full(cfg.prefs_per_user, cfg.pref_alpha), size=cfg.users)
    activity = rng.lognormal(0.0, cfg.activity_sigma, cfg.users)
    return _World(
        cat_p=cat_p,
        cat_keys=cat_keys,
        cat_items=cat_items,
        item_cat=item_cat,
        item_noun=(_NOUN_OFFSET[item_cat] + (rng.random(cfg.items) * _NOUN_COUNT[item_cat]).astype(int)),
        item_quality=rng.normal(0.0, 1.0, cfg.items).astype(np.float32),
        user_p=np.cumsum(activity) / activity.sum(),
        user_prefs=prefs.astype(np.int16),
        user_pref_cdf=np.cumsum(pref_w, axis=1),
        user_bias=rng.normal(0.0, 0.5, cfg.users).astype(np.float32),
    )


def _sample_items(world: _World, cats: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Items drawn by within-category Zipf popularity, one per entry of `cats`."""
    idx = np.searchsorted(world.cat_keys, cats + rng.random(len(cats)), side="right")
    return world.cat_items[np.minimum(idx, len(world.cat_items) - 1)]


def _sample_cats(world: _World, n: int, rng: np.random.Generator) -> np.ndarray:
    return _sample_cdf(np.cumsum(world.cat_p), n, rng)


# ---------------------------------------------------------------------------------------------------- plan


@dataclass
class _Plan:
    """One row per session, in write (start time) order."""

    user: np.ndarray
    cat: np.ndarray
    funnel: np.ndarray  # (sessions, 5): views, clicks, carts, buys, rates
    keep: np.ndarray  # events kept (all but the trimmed last session)
    start: np.ndarray  # Unix seconds
    room: np.ndarray  # seconds until the user's next session starts (or the end of the time range)


def _draw_funnels(cfg: SynthConfig, total: int, rng: np.random.Generator) -> np.ndarray:
    """Session funnels until their events reach `total` (nested binomials: clicks of views, carts of clicks...)."""
    per_view = 1 + cfg.p_click * (1 + cfg.p_cart * (1 + cfg.p_buy * (1 + cfg.p_rate)))
    chunks, have = [], 0
    while have < total:
        n = int((total - have) / (cfg.mean_views * per_view) * 1.02) + 64
        views = np.minimum(rng.geometric(1.0 / cfg.mean_views, n), cfg.max_views)
        clicks = rng.binomial(views, cfg.p_click)
        carts = rng.binomial(clicks, cfg.p_cart)
        buys = rng.binomial(carts, cfg.p_buy)
        funnel = np.stack([views, clicks, carts, buys, rng.binomial(buys, cfg.p_rate)], axis=1).astype(np.int32)
        chunks.append(funnel)
        have += int(funnel.sum())
    funnel = np.concatenate(chunks)
    n_sessions = int(np.searchsorted(np.cumsum(funnel.sum(axis=1)), total, side="left")) + 1
    return funnel[:n_sessions]


def _session_starts(users: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Start times: each user's sessions spread over an active window, at least min(6 h, window/k) apart."""
    order = np.argsort(users, kind="stable")
    _, first, k = np.unique(users[order], return_index=True, return_counts=True)
    span = END_TS - START_TS - 86400.0  # a day's margin for the last session's events
    window = np.maximum(rng.uniform(0.25, 1.0, len(k)) * span, np.minimum(span, 2.0 * k * _MIN_SESSION_GAP_S))
    min_gap = np.minimum(_MIN_SESSION_GAP_S, window / (k + 1))
    t0 = START_TS + rng.random(len(k)) * (span - window)
    gaps = rng.exponential(size=len(users))
    group_first = np.repeat(first, k)
    cum = _grouped_cumsum(gaps, group_first)
    total = cum[first + k - 1] + rng.exponential(size=len(k))
    j = np.arange(len(users)) - group_first
    t = np.repeat(t0, k) + np.repeat((window - k * min_gap) / total, k) * cum + j * np.repeat(min_gap, k)
    starts = np.empty(len(users), np.int64)
    starts[order] = np.floor(t).astype(np.int64)
    return starts


def _make_plan(cfg: SynthConfig, world: _World, rng: np.random.Generator) -> _Plan:
    funnel = _draw_funnels(cfg, cfg.events, rng)
    lengths = funnel.sum(axis=1)
    keep = lengths.copy()
    keep[-1] -= int(lengths.sum()) - cfg.events  # trim the last session to land on exactly `events`
    n = len(funnel)
    users = _sample_cdf(world.user_p, n, rng).astype(np.int32)
    slot = (rng.random(n)[:, None] >= world.user_pref_cdf[users]).sum(axis=1)
    cats = world.user_prefs[users, np.minimum(slot, cfg.prefs_per_user - 1)].astype(np.int32)
    explore = rng.random(n) < cfg.explore
    cats[explore] = _sample_cats(world, int(explore.sum()), rng)
    starts = _session_starts(users, rng)
    by_user = np.lexsort((starts, users))
    next_start = np.append(starts[by_user][1:], END_TS)
    next_start[np.append(users[by_user][1:] != users[by_user][:-1], True)] = END_TS
    room = np.empty(n, np.int64)
    room[by_user] = next_start - starts[by_user]
    order = np.argsort(starts, kind="stable")
    return _Plan(users[order], cats[order], funnel[order], keep[order], starts[order], room[order])


# ---------------------------------------------------------------------------------------------------- events


def _id_array(prefix: str, ids: np.ndarray, width: int) -> pa.Array:
    """Fixed-width ids such as u0000123 built straight into an Arrow string array (no Python strings)."""
    ids = np.asarray(ids, np.int64)
    chars = np.empty((len(ids), width + 1), np.uint8)
    chars[:, 0] = ord(prefix)
    chars[:, 1:] = (ids[:, None] // 10 ** np.arange(width - 1, -1, -1, dtype=np.int64)) % 10 + ord("0")
    offsets = np.arange(len(ids) + 1, dtype=np.int64) * (width + 1)
    return pa.LargeStringArray.from_buffers(len(ids), pa.py_buffer(offsets), pa.py_buffer(chars)).cast(pa.string())


def _id_width(n: int, minimum: int) -> int:
    return max(minimum, len(str(n - 1)))


def _ratings(quality: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """1..5 from a J-shaped base distribution tilted by (item quality + user bias)."""
    logits = np.log(_RATING_BASE_P)[None, :] + 0.35 * quality[:, None] * np.arange(-2, 3)[None, :]
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    cdf = np.cumsum(p / p.sum(axis=1, keepdims=True), axis=1)
    return 1 + (rng.random(len(quality))[:, None] >= cdf[:, :-1]).sum(axis=1)


def _reviews(ratings: np.ndarray, items: np.ndarray, world: _World, rng: np.random.Generator):
    """Review titles and texts from templates filled with the item's category words and rating sentiment."""
    n = len(ratings)
    sentiment = np.where(ratings <= 2, 0, np.where(ratings == 3, 1, 2))
    picks = rng.integers(0, 1 << 30, size=(n, 7))
    with_detail = rng.random(n) < 0.6
    titles, texts = [], []
    for i in range(n):
        s, noun = int(sentiment[i]), _NOUNS[world.item_noun[items[i]]]
        path, _, attrs, use = CATEGORY_TREE[world.item_cat[items[i]]]
        r = picks[i]
        fill = {
            "noun": noun,
            "attr": attrs[r[0] % len(attrs)],
            "use": use,
            "word": _WORDS[s][r[1] % len(_WORDS[s])],
            "dept": path.split(" > ")[-1].lower(),
        }
        titles.append(_TITLES[s][r[2] % len(_TITLES[s])].format(**fill))
        sentences = [_OPENINGS[s][r[3] % len(_OPENINGS[s])]]
        if with_detail[i]:
            fill["word"] = _WORDS[s][r[4] % len(_WORDS[s])]
            sentences.append(_DETAILS[s][r[5] % len(_DETAILS[s])])
        sentences.append(_CLOSINGS[s][r[6] % len(_CLOSINGS[s])])
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


def _timestamps(sess: np.ndarray, pos: np.ndarray, ev_type: np.ndarray, plan: _Plan, lo: int, hi: int,
                rng: np.random.Generator) -> np.ndarray:
    """Strictly increasing within a session (1-900 s apart) and ending before the user's next session starts."""
    gap = np.rint(_GAP_MEDIAN_S[ev_type] * np.exp(rng.normal(0.0, 0.8, len(ev_type))))
    gap = np.clip(gap, 1, 900).astype(np.int64)
    gap[pos == 0] = 0
    start = plan.start[lo:hi][sess]
    ts = start + _grouped_cumsum(gap, np.arange(len(pos)) - pos)
    # A session that would run into the next one is squeezed to 1 s steps at its end: min of two strictly
    # increasing sequences, so order is kept and no (user, item, timestamp, event_type) repeats.
    latest = start + plan.room[lo:hi][sess] - plan.keep[lo:hi][sess] + pos
    return np.maximum(np.minimum(ts, latest), START_TS)  # (the floor only matters for absurdly dense users)


def _event_batch(plan: _Plan, lo: int, hi: int, world: _World, cfg: SynthConfig, rng):
    """Events of sessions lo..hi as a table, plus their event type codes and item indices."""
    funnel = plan.funnel[lo:hi]
    view_sess, ev_view, ev_type = _funnel_events(funnel, cfg, rng)
    view_cat = plan.cat[lo:hi][view_sess]
    stray = rng.random(len(view_cat)) < cfg.stray
    view_cat[stray] = _sample_cats(world, int(stray.sum()), rng)
    view_item = _sample_items(world, view_cat, rng)

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
        _id_array("u", user, _id_width(cfg.users, 7)),
        _id_array("i", item, _id_width(cfg.items, 6)),
        pa.array(ts, pa.int64()),
        pc.take(pa.array(EVENT_TYPES, pa.string()), pa.array(ev_type.astype(np.int32))),
        pa.array(rating, pa.float32(), mask=~rate_mask),
        pc.take(pa.array(titles, pa.string()), review_take),
        pc.take(pa.array(texts, pa.string()), review_take),
    ]
    return pa.Table.from_arrays(columns, schema=EVENTS_SCHEMA), ev_type, item


# ---------------------------------------------------------------------------------------------------- writing


def _write_table(table: pa.Table, path: Path, fmt: str) -> None:
    if fmt == "parquet":
        pq.write_table(table, path)
    else:
        pacsv.write_csv(table, path, pacsv.WriteOptions(quoting_style="needed"))


class _PartWriter:
    """Buffers event batches and writes parts of exactly `events_per_part` rows (the last may be shorter)."""

    def __init__(self, events_dir: Path, cfg: SynthConfig):
        self.dir, self.cfg = events_dir, cfg
        self.buffer: list[pa.Table] = []
        self.rows = 0
        self.parts = 0

    def add(self, table: pa.Table) -> None:
        self.buffer.append(table)
        self.rows += table.num_rows
        while self.rows >= self.cfg.events_per_part:
            self._flush(self.cfg.events_per_part)

    def close(self) -> int:
        if self.rows:
            self._flush(self.rows)
        return self.parts

    def _flush(self, n: int) -> None:
        table = pa.concat_tables(self.buffer)
        rest = table.slice(n)
        path = self.dir / f"part-{self.parts:05d}.{self.cfg.fmt}"
        _write_table(table.slice(0, n).combine_chunks(), path, self.cfg.fmt)
        self.buffer = [rest] if rest.num_rows else []
        self.rows -= n
        self.parts += 1


def _write_items(path: Path, cfg: SynthConfig, world: _World, rng: np.random.Generator) -> None:
    """The catalogue, built with Arrow string kernels a chunk at a time."""
    brands = [head + tail for tail in _BRAND_TAILS for head in _BRAND_HEADS]
    brands = [brands[i] for i in rng.permutation(len(brands))[: len(_DEPTS) * _BRANDS_PER_DEPT]]
    paths = [p for p, *_ in CATEGORY_TREE]
    attrs = [a for _, _, cat_attrs, _ in CATEGORY_TREE for a in cat_attrs]
    attr_offset = np.cumsum([0] + [len(a) for _, _, a, _ in CATEGORY_TREE])[:-1]
    attr_count = np.array([len(a) for _, _, a, _ in CATEGORY_TREE])
    arr = {
        "brand": pa.array(brands),
        "noun": pa.array(_NOUNS),
        "Noun": pa.array([_cap(n) for n in _NOUNS]),
        "attr": pa.array(attrs),
        "Attr": pa.array([_cap(a) for a in attrs]),
        "variant": pa.array(_VARIANTS),
        "path": pa.array(paths),
        "dept": pa.array([p.split(" > ")[0].lower() for p in paths]),
        "leaf": pa.array([p.split(" > ")[-1].lower() for p in paths]),
    }
    writer = None
    try:
        for lo in range(0, cfg.items, _ITEM_CHUNK):
            idx = np.arange(lo, min(lo + _ITEM_CHUNK, cfg.items))
            cat = world.item_cat[idx]
            a1 = attr_offset[cat] + (rng.random(len(idx)) * attr_count[cat]).astype(int)
            a2 = attr_offset[cat] + (a1 - attr_offset[cat] + 1 + (rng.random(len(idx)) * (attr_count[cat] - 1))
                                     .astype(int)) % attr_count[cat]
            brand = pc.take(arr["brand"], _CAT_DEPT[cat] * _BRANDS_PER_DEPT
                            + (rng.random(len(idx)) ** 2 * _BRANDS_PER_DEPT).astype(int))
            noun, attr1, attr2 = world.item_noun[idx], pc.take(arr["attr"], a1), pc.take(arr["attr"], a2)
            title = pc.binary_join_element_wise(
                brand, " ", pc.take(arr["Attr"], a1), " ", pc.take(arr["Noun"], noun),
                pc.take(arr["variant"], rng.integers(0, len(_VARIANTS), len(idx))), "")
            description = pc.binary_join_element_wise(
                "The ", brand, " ", pc.take(arr["noun"], noun), " is ", attr1, " and ", attr2, ". Part of our ",
                pc.take(arr["leaf"], cat), " range in ", pc.take(arr["dept"], cat), ".", "")
            table = pa.Table.from_arrays(
                [_id_array("i", idx, _id_width(cfg.items, 6)), title, description, brand, pc.take(arr["path"], cat)],
                schema=ITEMS_SCHEMA,
            )
            if cfg.fmt == "csv":
                if writer is None:
                    options = pacsv.WriteOptions(quoting_style="needed")
                    writer = pacsv.CSVWriter(path, ITEMS_SCHEMA, write_options=options)
            elif writer is None:
                writer = pq.ParquetWriter(path, ITEMS_SCHEMA)
            writer.write_table(table)
    finally:
        if writer is not None:
            writer.close()


# ---------------------------------------------------------------------------------------------------- entry


def _check_out(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"synth output {out} already exists and is not an empty directory; refusing to overwrite")


def _generate(tmp: Path, cfg: SynthConfig) -> dict:
    world_rng, plan_rng, event_rng, item_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(cfg.seed)
                                                .spawn(4))
    world = _build_world(cfg, world_rng)
    plan = _make_plan(cfg, world, plan_rng)
    events_dir = tmp / "events"
    events_dir.mkdir()
    writer = _PartWriter(events_dir, cfg)
    counts = np.zeros(len(EVENT_TYPES), np.int64)
    seen_items = np.zeros(cfg.items, bool)
    for lo in range(0, len(plan.user), _SESSION_BATCH):
        batch, types, items = _event_batch(plan, lo, min(lo + _SESSION_BATCH, len(plan.user)), world, cfg, event_rng)
        counts += np.bincount(types, minlength=len(EVENT_TYPES))
        seen_items[items] = True
        writer.add(batch)
    parts = writer.close()
    _write_items(tmp / f"items.{cfg.fmt}", cfg, world, item_rng)
    return {
        "format": "prefmine-synth/1",
        "users": cfg.users,
        "items": cfg.items,
        "events": cfg.events,
        "seed": cfg.seed,
        "parts": parts,
        "events_per_part": cfg.events_per_part,
        "fmt": cfg.fmt,
        "counts": {name: int(n) for name, n in zip(EVENT_TYPES, counts)},
        "sessions": len(plan.user),
        "active_users": int(len(np.unique(plan.user))),
        "active_items": int(seen_items.sum()),
        "categories": int(len(world.cat_p)),
        "time_range": [START_TS, END_TS],
        "config": asdict(cfg),
    }


def synth(out: str | Path, cfg: SynthConfig) -> dict:
    """Write a synthetic event log, catalogue and synth.json into `out` (new or empty); returns synth.json."""
    cfg.validate()
    out = Path(out)
    _check_out(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    tmp.mkdir()
    try:
        manifest = _generate(tmp, cfg)
        (tmp / "synth.json").write_text(json.dumps(manifest, indent=2) + "\n")
        _check_out(out)
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest
