"""A user's history as serving scores it: the bundle's stored history, then what happened since the bundle was
made (the user's events in the feedback log that are newer than the bundle's history, and the request's recent
events), each event with what the ranker reads beside the item (its event type and time), so the ranker gets
the inputs training and evaluation give it rather than items alone, and a click recorded a moment ago changes
the next answer without a new bundle."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from prefmine.data.dataset import EVENTS
from prefmine.v1 import recommender_pb2 as pb

RATE = EVENTS.index("rate")  # the event type of an event known only by its item (as the data set's loader fills)
SESSION_EVENTS = 50  # at most this many of a user's newest feedback-log events are read per request
logger = logging.getLogger("ray.serve")  # the log a Serve replica writes to
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


def history_end(history) -> int | None:
    """Where the bundle's history of a user ends: its newest known time (unix seconds), None when it holds no
    timed event (the feedback log's events then all count as newer)."""
    times = as_history(history).times
    known = times[np.isfinite(times)]
    return int(known.max()) if len(known) else None


def logged_events(store, pseudonym: str, after_ts: int | None, limit: int = SESSION_EVENTS) -> list[tuple] | None:
    """The user's newest feedback-log rows after ``after_ts`` (one indexed query, at most ``limit``), or None when
    the store fails to answer: that is logged as a warning and the caller answers from the bundle's history, since
    a read that fails must not fail the request it only refines."""
    try:
        return list(store.recent_for_user(pseudonym, limit, after_ts))
    except Exception as e:  # noqa: BLE001 - any failure of the store: serve without the session's events
        logger.warning("feedback log not read (%s: %s); answering from the bundle's history", type(e).__name__, e)
        return None


def with_session(history, stored_rows: Sequence, recent_events: Sequence,
                 item_index: Callable[[str], int | None]) -> History:
    """``history`` (the bundle's: a History, or item indices) followed by what happened since: the feedback log's
    rows for the user (``(id, user, item, event, ts, rating)``, as ``FeedbackStore.recent_for_user`` gives them)
    newer than the history's end (`history_end`), and the ``recent_events`` of the request (objects with
    ``item_id``, ``type`` (a prefmine.v1 EventType) and ``timestamp``, unix seconds), together in timestamp order.

    A request event that the log holds too (the same item, type and second: a client that recorded it and also
    lists it as recent) counts once; each source's own events are kept as they are (a data set may hold the same
    event twice, and evaluation scores it so). Ties in time keep the log's order, then the request's. Items the
    catalogue does not know (new since the bundle) are left out, as are stored event names outside EVENTS. An
    event type outside EVENTS in the request (UNSPECIFIED, which validation refuses first) reads as `rate`."""
    history = as_history(history)
    end = history_end(history)
    merged: list[tuple[int, int, int, int]] = []  # (ts, order, item, event)
    for row in sorted(stored_rows, key=lambda r: r[0]):  # by id: the log's own order
        ts, item = int(row[4]), item_index(str(row[2]))
        if (end is None or ts > end) and item is not None and row[3] in EVENTS:
            merged.append((ts, len(merged), int(item), EVENTS.index(row[3])))
    logged = {(i, e, t) for t, _, i, e in merged}
    for ev in recent_events:
        ts, item = int(ev.timestamp), item_index(ev.item_id)
        event = EVENT_INDEX.get(int(getattr(ev, "type", 0)), RATE)
        if item is not None and (int(item), event, ts) not in logged:
            merged.append((ts, len(merged), int(item), event))
    if not merged:
        return history
    ts, _, items, evs = zip(*sorted(merged))
    return History(np.concatenate([history.items, np.asarray(items, dtype=np.int64)]),
                   np.concatenate([history.events, np.asarray(evs, dtype=np.int64)]),
                   np.concatenate([history.times, np.asarray(ts, dtype=np.float64)]))


def with_recent(history, recent_events: Sequence, item_index: Callable[[str], int | None]) -> History:
    """``history`` followed by the catalogue's items among ``recent_events`` (`with_session` without stored
    feedback)."""
    return with_session(history, (), recent_events, item_index)
