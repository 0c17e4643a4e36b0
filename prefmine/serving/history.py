"""A user's history as serving scores it: the bundle's stored history, then the request's recent events, each
event with what the ranker reads beside the item (its event type and time), so the ranker gets the inputs
training and evaluation give it rather than items alone."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from prefmine.data.dataset import EVENTS
from prefmine.v1 import recommender_pb2 as pb

RATE = EVENTS.index("rate")  # the event type of an event known only by its item (as the data set's loader fills)
# proto EventType -> index into EVENTS (the ranker's event-type input, minus the padding slot)
EVENT_INDEX = {int(pb.EventType.Value(f"EVENT_TYPE_{name.upper()}")): i for i, name in enumerate(EVENTS)}


@dataclass(frozen=True)
class History:
    """One user's events, oldest first: ``items`` (item indices, int64), ``events`` (EVENTS indices, int64) and
    ``times`` (unix seconds, float64; NaN where not known, which the ranker reads as an unknown gap)."""

    items: np.ndarray
    events: np.ndarray
    times: np.ndarray

    def __len__(self) -> int:
        return len(self.items)

    @classmethod
    def of(cls, items, events=None, times=None) -> History:
        """From aligned arrays; events default to `rate` and times to unknown (a caller that has only items)."""
        items = np.asarray(items, dtype=np.int64).reshape(-1)
        ev = np.full(len(items), RATE, dtype=np.int64) if events is None else np.asarray(events, dtype=np.int64)
        ts = np.full(len(items), np.nan) if times is None else np.asarray(times, dtype=np.float64)
        if len(ev) != len(items) or len(ts) != len(items):
            raise ValueError(f"history: {len(items)} items but {len(ev)} events and {len(ts)} times")
        if len(ev) and (ev.min() < 0 or ev.max() >= len(EVENTS)):
            raise ValueError(f"history events must be indices into {EVENTS}, got {sorted(set(ev.tolist()))}")
        return cls(items, ev, ts)


def as_history(h) -> History:
    """``h`` if it is a History, else an item array read as `rate` events at unknown times."""
    return h if isinstance(h, History) else History.of(h)


def ranker_inputs(histories: Sequence) -> dict[str, list[np.ndarray]]:
    """The keyword arguments of RankerRuntime's ``user_states`` / ``scores`` / ``top_n_with_states`` for several
    histories: ``histories`` (items), ``events`` and ``times``."""
    hs = [as_history(h) for h in histories]
    return {"histories": [h.items for h in hs], "events": [h.events for h in hs], "times": [h.times for h in hs]}


def with_recent(history, recent_events: Sequence, item_index: Callable[[str], int | None]) -> History:
    """``history`` (a History, or item indices) followed by the catalogue's items among ``recent_events``
    (objects with ``item_id``, ``type`` (a prefmine.v1 EventType) and ``timestamp``, unix seconds) in timestamp
    order, ties in request order, each with its event type and time; ids the catalogue does not know are left
    out. An event type outside EVENTS (UNSPECIFIED, which validation refuses first) reads as `rate`."""
    history = as_history(history)
    recent = sorted((int(ev.timestamp), n, item_index(ev.item_id), EVENT_INDEX.get(int(getattr(ev, "type", 0)),
                                                                                     RATE))
                    for n, ev in enumerate(recent_events))
    known = [(t, i, e) for t, _, i, e in recent if i is not None]
    if not known:
        return history
    ts, items, evs = zip(*known)
    return History(np.concatenate([history.items, np.asarray(items, dtype=np.int64)]),
                   np.concatenate([history.events, np.asarray(evs, dtype=np.int64)]),
                   np.concatenate([history.times, np.asarray(ts, dtype=np.float64)]))
