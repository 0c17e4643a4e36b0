"""Writing the synthetic log: event parts of exactly `events_per_part` rows, and the catalogue file (titles,
descriptions and brands built from the vocabulary with Arrow string kernels, a chunk of items at a time).

Parquet or CSV; the format only changes the encoding, never the rows.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from prefmine.data.synth.config import SynthConfig
from prefmine.data.synth.schema import (
    CONTENT_ITEMS_SCHEMA,
    CONTENT_KINDS,
    END_TS,
    ITEMS_SCHEMA,
    PUBLISHED_LEAD_S,
    START_TS,
    id_array,
    id_width,
)
from prefmine.data.synth.vocabulary import (
    BRAND_HEADS,
    BRAND_TAILS,
    BRANDS_PER_DEPT,
    CAT_DEPT,
    CATEGORY_TREE,
    DEPTS,
    NOUNS,
    VARIANTS,
)
from prefmine.data.synth.world import World

_ITEM_CHUNK = 250_000


def _cap(s: str) -> str:
    return " ".join(w[:1].upper() + w[1:] for w in s.split(" "))


def _write_table(table: pa.Table, path: Path, fmt: str) -> None:
    if fmt == "parquet":
        pq.write_table(table, path)
    else:
        pacsv.write_csv(table, path, pacsv.WriteOptions(quoting_style="needed"))


class PartWriter:
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


def write_items(path: Path, cfg: SynthConfig, world: World, rng: np.random.Generator,
                first_ts: np.ndarray | None = None) -> None:
    """The catalogue, built with Arrow string kernels a chunk at a time. With `cfg.content_share` > 0 a share of
    the items are content (`kind` article or video, else product) published up to three days before their first
    event (`first_ts`; an item without events at a random time of the log), so no event precedes publication."""
    brands = [head + tail for tail in BRAND_TAILS for head in BRAND_HEADS]
    brands = [brands[i] for i in rng.permutation(len(brands))[: len(DEPTS) * BRANDS_PER_DEPT]]
    paths = [p for p, *_ in CATEGORY_TREE]
    attrs = [a for _, _, cat_attrs, _ in CATEGORY_TREE for a in cat_attrs]
    attr_offset = np.cumsum([0] + [len(a) for _, _, a, _ in CATEGORY_TREE])[:-1]
    attr_count = np.array([len(a) for _, _, a, _ in CATEGORY_TREE])
    arr = {
        "brand": pa.array(brands),
        "noun": pa.array(NOUNS),
        "Noun": pa.array([_cap(n) for n in NOUNS]),
        "attr": pa.array(attrs),
        "Attr": pa.array([_cap(a) for a in attrs]),
        "variant": pa.array(VARIANTS),
        "path": pa.array(paths),
        "dept": pa.array([p.split(" > ")[0].lower() for p in paths]),
        "leaf": pa.array([p.split(" > ")[-1].lower() for p in paths]),
    }
    schema = CONTENT_ITEMS_SCHEMA if cfg.content_share > 0 else ITEMS_SCHEMA
    if cfg.content_share > 0:  # from a stream of their own: the other columns are the same with or without content
        content_rng = np.random.default_rng(np.random.SeedSequence(cfg.seed, spawn_key=(4,)))
        is_content = content_rng.random(cfg.items) < cfg.content_share
        kind = np.where(is_content, np.where(content_rng.random(cfg.items) < 2 / 3, *CONTENT_KINDS), "product")
        first = np.full(cfg.items, END_TS, np.int64) if first_ts is None else np.minimum(first_ts, END_TS)
        published = np.maximum(first - content_rng.integers(0, PUBLISHED_LEAD_S, cfg.items), START_TS)
        unseen = first >= END_TS
        published[unseen] = content_rng.integers(START_TS, END_TS, int(unseen.sum()))
    writer = None
    try:
        for lo in range(0, cfg.items, _ITEM_CHUNK):
            idx = np.arange(lo, min(lo + _ITEM_CHUNK, cfg.items))
            cat = world.item_cat[idx]
            a1 = attr_offset[cat] + (rng.random(len(idx)) * attr_count[cat]).astype(int)
            a2 = attr_offset[cat] + (a1 - attr_offset[cat] + 1 + (rng.random(len(idx)) * (attr_count[cat] - 1))
                                     .astype(int)) % attr_count[cat]
            brand = pc.take(arr["brand"], CAT_DEPT[cat] * BRANDS_PER_DEPT
                            + (rng.random(len(idx)) ** 2 * BRANDS_PER_DEPT).astype(int))
            noun, attr1, attr2 = world.item_noun[idx], pc.take(arr["attr"], a1), pc.take(arr["attr"], a2)
            title = pc.binary_join_element_wise(
                brand, " ", pc.take(arr["Attr"], a1), " ", pc.take(arr["Noun"], noun),
                pc.take(arr["variant"], rng.integers(0, len(VARIANTS), len(idx))), "")
            description = pc.binary_join_element_wise(
                "The ", brand, " ", pc.take(arr["noun"], noun), " is ", attr1, " and ", attr2, ". Part of our ",
                pc.take(arr["leaf"], cat), " range in ", pc.take(arr["dept"], cat), ".", "")
            columns = [id_array("i", idx, id_width(cfg.items, 6)), title, description, brand, pc.take(arr["path"], cat)]
            if cfg.content_share > 0:
                columns += [pa.array(kind[idx]), pa.array(np.where(is_content[idx], published[idx], 0),
                                                           mask=~is_content[idx], type=pa.int64())]
            table = pa.Table.from_arrays(columns, schema=schema)
            if cfg.fmt == "csv":
                if writer is None:
                    options = pacsv.WriteOptions(quoting_style="needed")
                    writer = pacsv.CSVWriter(path, schema, write_options=options)
            elif writer is None:
                writer = pq.ParquetWriter(path, schema)
            writer.write_table(table)
    finally:
        if writer is not None:
            writer.close()
