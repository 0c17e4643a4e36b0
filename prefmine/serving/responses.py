"""The protobuf answers of prefmine.v1.Recommender built from item indices and scores.

``catalogue`` is any object with ``item_ids`` and ``titles`` (lists by item index) and ``version`` (the bundle
version answering), as the ingress's ServedBundle has.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from prefmine.ads.auction import position_prices
from prefmine.serving.ad_auction import AdOutcome
from prefmine.serving.rank import RankCandidates
from prefmine.serving.search import SearchScores
from prefmine.v1 import recommender_pb2 as pb


def recommend_response(catalogue, items: np.ndarray, scores: np.ndarray, cold_start: bool,
                       placement: str = "") -> pb.RecommendResponse:
    return pb.RecommendResponse(
        items=[pb.RecommendedItem(item_id=catalogue.item_ids[int(i)], score=float(score),
                                  title=catalogue.titles[int(i)]) for i, score in zip(items, scores)],
        bundle_version=str(catalogue.version), cold_start=cold_start, placement=placement)


def search_response(catalogue, scored: SearchScores, items: np.ndarray, cold_start: bool,
                    facets: dict[str, list[tuple[str, int]]], retrieval: str) -> pb.SearchResponse:
    """``items`` (item indices, in answer order) with their scores among ``scored``, and the facet counts
    (``{"category": [(name, count), ...], "brand": [...]}``)."""
    return pb.SearchResponse(
        results=[pb.SearchResult(item_id=catalogue.item_ids[int(i)], score=score, text_score=text,
                                 lexical_score=lexical, relevance=relevance, title=catalogue.titles[int(i)])
                 for i, (score, text, lexical, relevance) in zip(items, scored.rows(items))],
        facets=[pb.Facet(field=field, value=str(value), count=int(count))
                for field in sorted(facets) for value, count in facets[field]],
        bundle_version=str(catalogue.version), cold_start=cold_start, retrieval=retrieval)


def rank_response(catalogue, cands: RankCandidates, probs: np.ndarray, ev: np.ndarray, order: np.ndarray,
                  cold_start: bool, ads: AdOutcome | None = None, calibrated: bool = False) -> pb.RankResponse:
    """The candidates in ``order`` (positions into cands) with their probability, bid, expected value and the
    generalised second price each pays per click (prefmine.ads.auction); each item under the raw id the request
    gave it. With ``ads`` (a request with campaigns: prefmine.serving.ad_auction) sponsored winners carry their
    auction price, slot and hold id, organic candidates pay nothing, and the other sponsored candidates are
    answered in ``unplaced`` with their reason instead of among the items."""
    if ads is None:
        price = position_prices(np.asarray(cands.bids, dtype=np.float64), np.asarray(probs, dtype=np.float64))
        items = [pb.RankedItem(item_id=cands.raw_ids[j], click_probability=float(probs[j]),
                               bid=float(cands.bids[j]), expected_value=float(ev[j]), price=float(price[j]))
                 for j in order]
        unplaced = []
    else:
        items = [pb.RankedItem(item_id=cands.raw_ids[j], click_probability=float(probs[j]), bid=float(cands.bids[j]),
                               expected_value=float(ev[j]), price=ads.price.get(int(j), 0.0),
                               campaign_id=cands.campaigns[j], ad_slot=ads.slot.get(int(j), 0),
                               ad_impression_id=ads.hold_id.get(int(j), ""))
                 for j in order if int(j) not in ads.unplaced]
        unplaced = [pb.UnplacedAd(item_id=cands.raw_ids[j], campaign_id=cands.campaigns[j], reason=why)
                    for j, why in sorted(ads.unplaced.items(), key=lambda kv: cands.positions[kv[0]])]
    return pb.RankResponse(items=items, unknown_item_ids=cands.unknown, bundle_version=str(catalogue.version),
                           cold_start=cold_start, unplaced=unplaced, calibrated=calibrated)


def similar_response(catalogue, idx: np.ndarray, sims: np.ndarray) -> pb.SimilarItemsResponse:
    return pb.SimilarItemsResponse(
        items=[pb.SimilarItem(item_id=catalogue.item_ids[int(j)], similarity=float(sim),
                              title=catalogue.titles[int(j)]) for j, sim in zip(idx, sims)],
        bundle_version=str(catalogue.version))


def component_infos(manifest: dict[str, Any]) -> list[pb.ComponentInfo]:
    """ModelInfo's components from a bundle manifest: encoder, ranker, policy first, then any other in name
    order; each with its version (or kind) and its scalar attributes as strings."""
    present = manifest.get("components") or {}
    known = [c for c in ("encoder", "ranker", "policy") if c in present]
    comps = []
    for name in known + sorted(set(present) - set(known)):
        spec = present[name]
        spec = spec if isinstance(spec, dict) else {"version": spec}
        version = str(spec.get("version", spec.get("kind", "")))
        attrs = {str(a): str(v) for a, v in spec.items()
                 if a not in ("version",) and isinstance(v, (str, int, float, bool))}
        comps.append(pb.ComponentInfo(name=name, version=version, attributes=attrs))
    return comps


def policy_gate(decision: dict[str, Any] | None) -> pb.PolicyGate | None:
    """ModelInfo's policy_gate from a GateDecision's dict (None: the bundle has no gate), figures best first."""
    if not decision:
        return None
    figures = sorted((decision.get("figures") or {}).items(), key=lambda kv: -float(kv[1]["return_mean"]))
    return pb.PolicyGate(
        served=str(decision["served"]), learned=str(decision.get("learned") or ""),
        best_heuristic=str(decision.get("best_heuristic", "")), reason=str(decision.get("reason", "")),
        mix_alpha=float(decision.get("alpha", 1.0)),
        figures=[pb.PolicyFigure(policy=name, return_mean=float(f["return_mean"]), ci95=float(f["ci95"]))
                 for name, f in figures])
