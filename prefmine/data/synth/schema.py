"""The synthetic log's fixed shape: time range, event types, the two file schemas and the id columns.

Everything here is what a reader of the files can rely on whatever the settings, so the generator's steps and the
tests share one definition.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

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
# with content (SynthConfig.content_share > 0): each item's kind and, for content, when it was published
CONTENT_ITEMS_SCHEMA = ITEMS_SCHEMA.append(pa.field("kind", pa.string())).append(pa.field("published", pa.int64()))
CONTENT_KINDS = ("article", "video")  # drawn 2:1
PUBLISHED_LEAD_S = 3 * 86400  # content appears up to this long before its first event


def id_array(prefix: str, ids: np.ndarray, width: int) -> pa.Array:
    """Fixed-width ids such as u0000123 built straight into an Arrow string array (no Python strings)."""
    ids = np.asarray(ids, np.int64)
    chars = np.empty((len(ids), width + 1), np.uint8)
    chars[:, 0] = ord(prefix)
    chars[:, 1:] = (ids[:, None] // 10 ** np.arange(width - 1, -1, -1, dtype=np.int64)) % 10 + ord("0")
    offsets = np.arange(len(ids) + 1, dtype=np.int64) * (width + 1)
    return pa.LargeStringArray.from_buffers(len(ids), pa.py_buffer(offsets), pa.py_buffer(chars)).cast(pa.string())


def id_width(n: int, minimum: int) -> int:
    return max(minimum, len(str(n - 1)))
