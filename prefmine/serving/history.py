"""A user's history as serving scores it: the bundle's history, then the request's recent events."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np


def with_recent(history: np.ndarray, recent_events: Sequence, item_index: Callable[[str], int | None]) -> np.ndarray:
    """``history`` followed by the catalogue's items among ``recent_events`` (objects with ``timestamp`` and
    ``item_id``) in timestamp order, ties in request order; ids the catalogue does not know are left out."""
    history = np.asarray(history, dtype=np.int64)
    if not recent_events:
        return history
    recent = sorted((ev.timestamp, n, item_index(ev.item_id)) for n, ev in enumerate(recent_events))
    extra = [int(i) for _, _, i in recent if i is not None]
    return np.concatenate([history, np.asarray(extra, dtype=np.int64)]) if extra else history
