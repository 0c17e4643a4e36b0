"""The ads wiring of the ingress: WriteCampaigns (campaign rows checked one by one, the good ones stored in the
shared feedback store), Rank's ad auction on the store's ledger (prefmine.serving.ad_auction) with holds past
their TTL released now and then, and the clicks of RecordFeedback that charge a held price."""

from __future__ import annotations

import time

import numpy as np

from prefmine.ads.campaigns import Campaign, validate_campaigns
from prefmine.ads.config import AdsConfig
from prefmine.ads.frequency import FrequencyCap
from prefmine.serving.ad_auction import AdOutcome, auction
from prefmine.v1 import recommender_pb2 as pb
from serve.validate import BadRequest

RELEASE_EVERY_S = 5.0  # how often one ingress replica frees the holds past their TTL (any replica may)


def campaign_of(row: pb.CampaignRow) -> Campaign:
    return Campaign(campaign=row.campaign_id, daily_budget=row.daily_budget,
                    freq_cap=int(row.freq_cap) if row.HasField("freq_cap") else None,
                    active=bool(row.active) if row.HasField("active") else True)


def write_campaigns(store, request: pb.WriteCampaignsRequest) -> pb.WriteCampaignsResponse:
    """Check the rows and store the good ones durably before answering. Blocking: a worker thread, under the
    store's lock."""
    if not request.rows:
        raise BadRequest("rows: at least one row is required")
    try:
        good, bad = validate_campaigns([campaign_of(r) for r in request.rows])
    except ValueError as e:  # too many rows
        raise BadRequest(f"rows: {e}") from e
    stored = store.ads.put_campaigns(good) if good else 0
    return pb.WriteCampaignsResponse(stored=stored, refused=[
        pb.CampaignRowError(index=e.index, campaign_id=e.campaign, reason=e.reason) for e in bad])


class AdServing:
    """One ingress replica's ad settings, pacing randomness and each served version's calibrator."""

    def __init__(self, config: dict | None):
        self.config = AdsConfig.of(config)
        self.rng = np.random.default_rng()
        # erased people's ad impressions, in this replica's memory only (prefmine.serving.ad_auction)
        self.erased_caps = FrequencyCap(self.config.freq_cap, self.config.freq_window_s)
        self._released = 0.0
        self._calibrators: dict = {}  # bundle ref -> Calibrator | None

    def calibrator(self, ref):
        """The calibrator of a served bundle version (its ``ads/`` part, checked against the manifest first; a
        URI's copy in this node's cache), None without one. Blocking on first use of a version."""
        key = (ref.path, ref.version)
        if key not in self._calibrators:
            from prefmine.ads.bundle_calibration import PART, load_bundle_calibrator
            from prefmine.integrity import verify
            from prefmine.store import fetch, is_uri

            local = str(fetch(ref.path)) if is_uri(ref.path) else ref.path  # fetched already by ServedBundle
            verify(local, only=PART)
            self._calibrators = {key: load_bundle_calibrator(local)}  # the version served now only
        return self._calibrators[key]

    def run(self, store, user: str, items: list[str], campaigns: list[str], bids, pctr, erased: bool = False,
            now: float | None = None) -> AdOutcome:
        """Rank's auction (blocking: a worker thread, under the store's lock). erased: `user` is on the tombstone
        list: nothing about them reaches the store, their cap is counted in memory."""
        now = time.time() if now is None else float(now)
        if now - self._released >= RELEASE_EVERY_S:
            self._released = now
            store.ads.release_expired(self.config.hold_ttl_s, now)
            self.erased_caps.sweep(now)
        if erased:
            return auction(store.ads, "", items, campaigns, bids, pctr, self.config, self.rng, now,
                           volatile=(self.erased_caps, user))
        return auction(store.ads, user, items, campaigns, bids, pctr, self.config, self.rng, now)


def charge_clicks(store, events) -> float:
    """Charge the held price of every click that names an ad impression (a retry charges nothing more); events
    naming no hold, or another user's or item's, charge nothing. Blocking, under the store's lock."""
    return sum(store.ads.commit(e.impression_id, e.user, e.item) for e in events
               if e.event == "click" and e.impression_id)
