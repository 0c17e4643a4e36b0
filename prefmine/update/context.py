"""The data the guard evaluates both versions on, built from the serving catalogue and the new feedback.

Held-out events: each user's last new interaction on a catalogue item (click, cart, buy, rate) is the target;
the user's history is the serving catalogue's plus the earlier new interactions. The loop builds the candidate
without the target events (`held_out_ids`), so neither version has learned from what it is judged on. Impression contexts: the
impression's user's history as the serving catalogue's plus the new interactions logged before the impression.
"""

from __future__ import annotations

from prefmine.feedback import Impression

INTERACTIONS = ("click", "cart", "buy", "rate")


def _new_interactions(events: list[tuple], index: dict[str, int]) -> dict[str, list[tuple[int, int, int]]]:
    """Per user, (ts, item index, event id) of each new interaction on a catalogue item, in log order."""
    out: dict[str, list[tuple[int, int, int]]] = {}
    for event_id, user, item, event, ts, _rating in events:
        i = index.get(str(item))
        if i is not None and event in INTERACTIONS:
            out.setdefault(user, []).append((int(ts), i, int(event_id)))
    return out


def _held_out(histories: dict[str, list[int]], events: list[tuple], index: dict[str, int]):
    """(history before, target item, target event id) per user whose last new interaction is not already in that
    history."""
    for user, new in _new_interactions(events, index).items():
        before = list(histories.get(user, []))
        for _ts, i, _id in new[:-1]:
            if i not in before:
                before.append(i)
        _ts, target, event_id = new[-1]
        if target in before or not before:
            continue  # a repeat is not a next-item event; a user with no history has nothing to rank from
        yield before, target, event_id


def held_out_events(histories: dict[str, list[int]], events: list[tuple], index: dict[str, int]):
    """(histories before, targets): one row per user whose last new interaction is not already in that history."""
    rows = list(_held_out(histories, events, index))
    return [r[0] for r in rows], [r[1] for r in rows]


def held_out_ids(histories: dict[str, list[int]], events: list[tuple], index: dict[str, int]) -> frozenset[int]:
    """The feedback ids of the events `held_out_events` makes targets: what the candidate must not learn from, so
    that it is judged on interactions it has not seen (the guard's held-out metrics)."""
    return frozenset(r[2] for r in _held_out(histories, events, index))


def impression_histories(histories: dict[str, list[int]], events: list[tuple], index: dict[str, int],
                         impressions: list[Impression]) -> list[list[int]]:
    """Per impression, its user's history when it was served (catalogue + new interactions before its time)."""
    new = _new_interactions(events, index)
    out = []
    for imp in impressions:
        h = list(histories.get(imp.user, []))
        for ts, i, _id in new.get(imp.user, []):
            if ts < imp.ts and i not in h:
                h.append(i)
        out.append(h)
    return out


def clicked_items(feedback: dict[str, list[tuple]]) -> dict[str, set[str]]:
    """Per impression id, the items a click, cart or buy named."""
    return {imp: {str(row[2]) for row in rows if row[3] in ("click", "cart", "buy")}
            for imp, rows in feedback.items()}
