"""Synthetic platform event log for scale tests (`prefmine data synth`).

Real review dumps top out at a few million rows and carry no views, clicks or carts, so scale tests and the
`events` source reader need a platform-shaped log of any size. `generate.synth(out, config.SynthConfig(...))`
writes:

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

One module per step: `config` (the settings), `schema` (the files' fixed shape), `vocabulary` (categories and the
words of titles and reviews), `world` (categories, items and users), `sessions` (the session plan), `events` (the
events of a batch of sessions), `write` (event parts and the catalogue file), `generate` (the entry point).
"""
