"""WriteCatalog's wiring: the request's rows as the live catalogue's row mappings (prefmine.catalog.rows), the
good rows logged in the feedback store with the request's idempotency key, the bad ones answered by name."""

from __future__ import annotations

from prefmine.catalog import validate_rows
from prefmine.feedback import IdempotencyConflict
from prefmine.v1 import recommender_pb2 as pb
from serve.validate import BadRequest


def row_of(r: pb.CatalogRow) -> dict:
    """A CatalogRow as a row mapping: empty strings and lists, and unset optionals, are left out."""
    if r.retire:
        row = {"item": r.item_id, "op": "retire"}
        extra = [f for f in ("title", "brand", "kind", "description") if getattr(r, f)] \
            + (["categories"] if r.categories else []) \
            + [f for f in ("price", "available", "published") if r.HasField(f)]
        row.update({f: True for f in extra})  # refused by validation: a retire carries no fields
        return row
    row = {"item": r.item_id}
    for name in ("title", "brand", "kind", "description"):
        if getattr(r, name):
            row[name] = getattr(r, name)
    if r.categories:
        row["categories"] = list(r.categories)
    for name in ("price", "available", "published"):
        if r.HasField(name):
            row[name] = getattr(r, name)
    return row


class KnownItems:
    """Membership in the served bundle's items or the items written through the log (what `known` asks)."""

    def __init__(self, item_index, written: dict):
        self.item_index, self.written = item_index, written

    def __contains__(self, item) -> bool:
        return item in self.written or self.item_index(item) is not None


def write_catalog(store, request: pb.WriteCatalogRequest, known) -> pb.WriteCatalogResponse:
    """Validate the rows (`known`: ids the catalogue holds, whose upserts may leave out the title) and log the
    good ones, durably, before answering. Blocking: call it in a worker thread, under the store's lock."""
    if not request.rows:
        raise BadRequest("rows: at least one row is required")
    try:
        good, bad = validate_rows([row_of(r) for r in request.rows], known=known)
    except ValueError as e:  # too many rows
        raise BadRequest(f"rows: {e}") from e
    last = 0
    if good:
        try:
            last = store.append_catalog(good, idempotency_key=request.idempotency_key or None)
        except IdempotencyConflict as e:
            raise BadRequest(str(e)) from e
        except ValueError as e:  # a malformed idempotency key
            raise BadRequest(str(e)) from e
    return pb.WriteCatalogResponse(stored=len(good), last_id=last, refused=[
        pb.CatalogRowError(index=e.index, item_id=e.item, reason=e.reason) for e in bad])
